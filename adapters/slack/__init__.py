"""Slack: DMs and mentions answered with streamed replies, /reset and /finetune, on slack_bolt's AsyncApp."""

from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]
