"""Every sentence a user sees, in Korean and English, in one place.

``say(key, lang, **fields)`` picks the language; ``language_of(text)`` guesses it from the user's own words.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["ko", "en"]

TEXTS: dict[str, dict[Lang, str]] = {
    # chat
    "chat.empty": {
        "ko": "메시지가 비어 있어요. 질문을 함께 적어 주세요.",
        "en": "Your message is empty. Please write your question after the mention.",
    },
    "chat.too_long": {
        "ko": "메시지가 너무 길어요 (약 {tokens}토큰, 최대 {limit}토큰). 나누어서 보내 주세요.",
        "en": "Your message is too long (about {tokens} tokens; the limit is {limit}). Please split it up.",
    },
    "chat.history_trimmed": {
        "ko": "(대화가 길어져 최근 {kept}개의 메시지만 참고했어요.)",
        "en": "(The conversation is long: only the last {kept} messages were used.)",
    },
    "chat.unreadable": {
        "ko": "메시지에 읽을 수 없는 문자가 있어요. 다시 입력해서 보내 주세요.",
        "en": "Your message holds characters I cannot read. Please type it again.",
    },
    "chat.restarted": {
        "ko": "봇이 다시 시작되는 동안 이 메시지에 답하지 못했어요. 다시 물어봐 주세요.",
        "en": "I restarted before I could answer this message. Please ask again.",
    },
    "files.not_text": {
        "ko": "저는 텍스트 파일(UTF-8 텍스트, 코드, 마크다운, CSV, {kb}KB까지)만 읽을 수 있어서 {names}은(는) 읽지 "
        "않았어요.",
        "en": "I read only text files (UTF-8 text, code, Markdown, CSV, up to {kb} KB), so I did not read {names}.",
    },
    "files.image": {
        "ko": "그림은 볼 수 없어서 {names}은(는) 읽지 않았어요.",
        "en": "I cannot see pictures, so I did not read {names}.",
    },
    "chat.queued": {"ko": "대기 중 ({position}번째)", "en": "queued, #{position}"},
    "chat.thinking": {"ko": "생각 중…", "en": "thinking…"},
    "chat.incomplete": {"ko": "(답변이 중간에 끊겼어요)", "en": "(reply incomplete)"},
    # errors
    "error.generic": {
        "ko": "죄송해요, 문제가 생겼어요. 잠시 후 다시 시도해 주세요.",
        "en": "Sorry, something went wrong. Please try again in a moment.",
    },
    "error.engine": {
        "ko": "죄송해요, 답변을 만드는 중 문제가 생겼어요. 잠시 후 다시 물어봐 주세요.",
        "en": "Sorry, I could not finish the answer. Please ask again in a moment.",
    },
    "error.queue_full": {
        "ko": "지금 요청이 너무 많아요. 1분쯤 뒤에 다시 물어봐 주세요.",
        "en": "I am handling too many requests right now. Please ask again in a minute.",
    },
    "error.store": {
        "ko": "죄송해요, 대화를 저장하지 못했어요. 잠시 후 다시 시도해 주세요.",
        "en": "Sorry, I could not save the conversation. Please try again in a moment.",
    },
    "error.queue_user_full": {
        "ko": "이미 답을 기다리는 질문이 여러 개 있어요. 그 답이 나온 뒤(1분쯤 뒤)에 다시 물어봐 주세요.",
        "en": "You already have several questions waiting for an answer. Please ask again once they are answered "
        "(in a minute or so).",
    },
    "error.queue_channel_full": {
        "ko": "이 채널에 답을 기다리는 질문이 너무 많아요. 1분쯤 뒤에 다시 물어봐 주세요.",
        "en": "Too many questions in this channel are waiting for an answer. Please ask again in a minute.",
    },
    "error.maintenance": {
        "ko": "지금 점검(모델 학습) 중이에요. 잠시 후 다시 물어봐 주세요.",
        "en": "I am down for maintenance (model training). Please ask again soon.",
    },
    "error.maintenance_until": {
        "ko": "지금 점검(모델 학습) 중이에요. {time}쯤(약 {minutes}분 뒤) 다시 답할 수 있을 거예요.",
        "en": "I am down for maintenance (model training) and expect to be back around {time} (in about {minutes} "
        "min).",
    },
    "error.timeout": {
        "ko": "답변 시간이 너무 오래 걸려 멈췄어요. 질문을 짧게 해서 다시 시도해 주세요.",
        "en": "The answer took too long and was stopped. Please try a shorter question.",
    },
    "error.cancelled": {
        "ko": "답변이 취소되었어요.",
        "en": "The answer was cancelled.",
    },
    "error.not_admin": {
        "ko": "이 명령은 관리자만 쓸 수 있어요. 서버 관리자에게 문의해 주세요.",
        "en": "Only admins can use this command. Please ask a server admin.",
    },
    "error.not_allowed_here": {
        "ko": "이 봇은 이 서버(워크스페이스)에서 쓰도록 설정되어 있지 않아요.",
        "en": "This bot is not set up to serve this server or workspace.",
    },
    "error.shared_model_admin": {
        "ko": "이 명령은 모든 팀이 함께 쓰는 모델을 바꿔요. 봇 운영자가 {allowlist}에 이 서버(워크스페이스)를 "
        "넣거나 {admin_ids}에 당신의 id를 넣어야 쓸 수 있어요.",
        "en": "This command changes the model every team shares: the bot's operator must list this server or "
        "workspace in {allowlist}, or your id in {admin_ids}, before you can use it.",
    },
    "error.unknown_command": {
        "ko": "알 수 없는 명령이에요. /help 로 명령 목록을 볼 수 있어요.",
        "en": "Unknown command. Type /help to see the commands.",
    },
    # commands
    "cmd.reset.done": {
        "ko": "이 채널의 대화 기록을 지웠어요 ({count}개 메시지).",
        "en": "This channel's conversation was cleared ({count} messages).",
    },
    "cmd.reset.done_thread": {
        "ko": "이 채널에서 최근에 저와 나눈 대화를 지웠어요: “{opening}”(으)로 시작하는 스레드 ({count}개 메시지). "
        "다른 스레드를 지우려면 그 스레드의 링크를 붙여 주세요: /reset <링크>",
        "en": "Cleared your latest conversation with me in this channel: the thread that starts “{opening}” "
        "({count} messages). To clear another thread, add its link: /reset <link>",
    },
    "cmd.reset.no_thread": {
        "ko": "이 채널에서 저와 대화한 스레드를 찾지 못했어요. 지울 스레드의 링크를 붙여 주세요 "
        "(스레드 첫 메시지 ⋮ → 링크 복사): /reset <링크>",
        "en": "I found no thread in this channel where you talked with me. Add the link of the thread to clear "
        "(⋮ → Copy link on its first message): /reset <link>",
    },
    "cmd.link_other_channel": {
        "ko": "이 링크는 다른 채널의 스레드예요. 그 채널에서 명령을 실행해 주세요. 아무것도 지우지 않았어요.",
        "en": "That link points to a thread in another channel: run the command in that channel. Nothing was cleared.",
    },
    "cmd.finetune.unavailable": {
        "ko": "학습 기능이 아직 설정되지 않았어요.",
        "en": "Fine-tuning is not set up on this bot.",
    },
    # /help: what each command does (the English ones match the CommandSpec usage)
    "help.usage.help": {
        "ko": "/help: 이 목록. 질문은 봇을 멘션하거나 DM으로 보내 주세요.",
        "en": "/help: this list. Mention the bot (or DM it) to ask a question.",
    },
    "help.usage.reset": {
        "ko": "/reset: 이 채널(또는 스레드)에서 나눈 대화를 봇이 모두 잊어요. 슬랙 채널에서는 그 채널에서 저와 나눈 최근 "
        "스레드, 또는 링크를 붙인 스레드(/reset <링크>)를 지워요.",
        "en": "/reset: the bot forgets everything said in this channel (or thread) so far. In a Slack channel: "
        "your latest thread with the bot there, or the thread whose link you add (/reset <link>).",
    },
    "help.usage.finetune": {
        "ko": "/finetune action:run: 모은 대화로 지금 LoRA를 학습해요 (지금 것보다 나을 때만 적용); "
        "/finetune action:status: 진행 상황, 마지막 결과, 사용 중인 LoRA와 시험 중인 LoRA; "
        "/finetune action:try [channels:#채널]: 아직 적용하지 않은 최신 후보 LoRA를 이 채널(또는 적은 채널)에서만 "
        "시험해요, 다른 채널은 지금 버전 그대로; /finetune action:promote: 시험 중인 후보를 모두의 기본으로 적용해요; "
        "/finetune action:rollback: 시험 중이면 시험을 끝내고, 아니면 이전 LoRA로 되돌려요. "
        "(콘솔과 슬랙에서는 /finetune run 처럼 써도 돼요.)",
        "en": (
            "/finetune action:run: train a LoRA on the collected conversations now (used only if it beats the "
            "current one); /finetune action:status: progress, last result, the LoRA in service and the one on trial; "
            "/finetune action:try [channels:#channel]: serve the newest candidate (trained, not promoted) only in "
            "this channel (or the channels listed) while everyone else keeps the current version; "
            "/finetune action:promote: make the candidate on trial everyone's default; /finetune action:rollback: end "
            "the trial if one is going, else back to the previous LoRA. (In the console and Slack, /finetune run works "
            "too.)"
        ),
    },
    "help.usage.forget-me": {
        "ko": "/forget-me: 앞으로 당신의 메시지를 학습에 쓰지 않아요; /forget-me delete:yes 는 저장된 메시지와 그 답변도 "
        "지워요; /forget-me undo:yes 는 다시 학습에 참여해요.",
        "en": "/forget-me: your messages are never used for training again; /forget-me delete:yes also removes "
        "them, and the bot's replies to them, from the bot's history; /forget-me undo:yes opts you back in.",
    },
    "help.usage.persona": {
        "ko": "/persona [show | set <프롬프트> | clear]: 이 채널의 시스템 프롬프트와 그 토큰 수를 보거나, 바꾸거나, "
        "기본값으로 되돌려요.",
        "en": "/persona [show | set <prompt> | clear]: this channel's system prompt and what it costs in tokens.",
    },
    "help.usage.summarize": {
        "ko": "/summarize [count:N]: 이 채널의 최근 메시지 N개(기본 50, 최대 200)를 요약해요. 슬랙에서는 스레드 링크를 "
        "붙이면(/summarize <링크>) 그 스레드를 요약해요. 요약은 학습에 쓰이지 않아요.",
        "en": "/summarize [count:N]: summarise this channel's last N messages (default 50, at most 200); in Slack, "
        "add a thread's link (/summarize <link>) to summarise that thread. Summaries are never used for training.",
    },
    # /summarize
    "cmd.summarize.unavailable": {
        "ko": "여기서는 대화 기록을 읽을 수 없어서 요약할 수 없어요.",
        "en": "The bot cannot read the conversation's history here, so it cannot summarise it.",
    },
    "cmd.summarize.bad_count": {
        "ko": "count 는 1에서 {most} 사이의 숫자로 써 주세요 (예: /summarize count:30).",
        "en": "Please give count as a number from 1 to {most} (for example /summarize count:30).",
    },
    "cmd.summarize.empty": {
        "ko": "요약할 메시지가 없어요.",
        "en": "There are no messages to summarise.",
    },
    "cmd.summarize.cannot_read": {
        "ko": "이 대화의 기록을 읽을 수 없었어요. 봇이 이 채널에 있고 기록 읽기 권한이 있는지 확인해 주세요.",
        "en": "The bot could not read this conversation's history: check that it is in the channel and may read "
        "its history.",
    },
    "cmd.summarize.done": {
        "ko": "메시지 {count}개를 요약했어요.",
        "en": "Summarised {count} messages.",
    },
    "summarize.instruction": {
        "ko": "당신은 팀 대화를 요약하는 도우미예요. 아래 대화를 한국어로 간결하게 요약하세요: 주요 주제, 결정된 것, "
        "남은 질문과 할 일(누가 맡았는지)을 짧은 목록으로 써 주세요. 대화에 없는 내용은 지어내지 마세요.",
        "en": "You summarise team conversations. Summarise the conversation below in English, concisely: the main "
        "topics, what was decided, and the open questions and to-dos (with who took them), as a short list. Do "
        "not add anything the conversation does not say.",
    },
    "summarize.request": {
        "ko": "다음 대화({count}개 메시지)를 요약해 주세요:\n\n{transcript}",
        "en": "Please summarise this conversation ({count} messages):\n\n{transcript}",
    },
    # learning loop (/finetune, /forget-me)
    "cmd.finetune.started": {
        "ko": "학습 #{run}을(를) 시작했어요. 진행 상황은 /finetune status 로 볼 수 있어요.",
        "en": "Fine-tune run #{run} started. /finetune status shows its progress.",
    },
    "cmd.finetune.already_running": {
        "ko": "이미 학습 #{run}이(가) 진행 중이에요. 진행 상황은 /finetune status 로 볼 수 있어요.",
        "en": "A fine-tune is already running (run #{run}). /finetune status shows its progress.",
    },
    "cmd.finetune.rolled_back": {
        "ko": "{previous}에서 {current}(으)로 되돌렸어요.",
        "en": "Rolled back from {previous} to {current}.",
    },
    "cmd.finetune.nothing_to_roll_back": {
        "ko": "되돌릴 학습 결과가 없어요. 지금은 기본 모델이 답하고 있어요.",
        "en": "There is nothing to roll back: the base model is already answering.",
    },
    "cmd.finetune.unknown_action": {
        "ko": "action은 run, status, try, promote, rollback 중 하나여야 해요.",
        "en": "The action must be run, status, try, promote or rollback.",
    },
    "cmd.finetune.trying": {
        "ko": "후보 LoRA {version}을(를) 시험 중이에요: {channels}. 다른 채널은 {active} 그대로예요. "
        "/finetune promote 로 모두에게 적용하고, /finetune rollback 으로 시험을 끝낼 수 있어요.",
        "en": "Trying candidate LoRA {version} in {channels}; every other channel keeps {active}. "
        "/finetune promote makes it everyone's default; /finetune rollback ends the trial.",
    },
    "cmd.finetune.nothing_to_try": {
        "ko": "시험할 후보 LoRA가 없어요 (학습한 버전은 모두 적용되었거나 정리되었어요). /finetune run 으로 새로 "
        "학습할 수 있어요.",
        "en": "There is no candidate to try: every trained version was promoted or dropped. /finetune run trains "
        "a new one.",
    },
    "cmd.finetune.bad_channels": {
        "ko": "“{word}”을(를) 채널로 읽지 못했어요. 채널은 #채널 멘션(또는 ID)으로, 띄어 써서 적어 주세요.",
        "en": "I could not read “{word}” as a channel. List channels as #channel mentions (or ids), separated by "
        "spaces.",
    },
    "cmd.finetune.promoted": {
        "ko": "LoRA {version}을(를) 모두의 기본으로 적용했어요 (이전: {previous}).",
        "en": "LoRA {version} is now everyone's default (was {previous}).",
    },
    "cmd.finetune.nothing_to_promote": {
        "ko": "적용할 후보 LoRA가 없어요. /finetune status 로 사용 중인 버전을 볼 수 있어요.",
        "en": "There is no candidate to promote. /finetune status shows the version in service.",
    },
    "cmd.finetune.trial_ended": {
        "ko": "LoRA {version} 시험을 끝냈어요. 모든 채널이 다시 {active}(으)로 답해요.",
        "en": "Ended the trial of LoRA {version}: every channel gets {active} again.",
    },
    "finetune.base_model": {"ko": "기본 모델", "en": "the base model"},
    "finetune.status.idle": {"ko": "진행 중인 학습은 없어요.", "en": "No fine-tune is running."},
    "finetune.status.tenant": {
        "ko": "이 팀({tenant})의 전용 버전이에요: 이 팀의 대화로만 학습하고 이 팀에만 적용돼요.",
        "en": "This team ({tenant}) has its own version: trained on its conversations only, served to it alone.",
    },
    "cmd.finetune.base_tenant": {
        "ko": "이 팀은 설정(tenants)에 따라 기본 모델로만 답하고, 대화는 학습에 쓰이지 않아요. 그래서 여기서는 "
        "/finetune 으로 할 일이 없어요.",
        "en": "This team is served the base model (the tenants settings) and its conversations are never trained "
        "on, so /finetune has nothing to do here.",
    },
    "finetune.status.running": {
        "ko": "학습 #{run}: {phase}, {step}/{total} 단계, loss {loss}, 남은 시간 약 {eta} (시작: {by}).",
        "en": "Run #{run}: {phase}, step {step}/{total}, loss {loss}, about {eta} left (started by {by}).",
    },
    "finetune.status.curve": {
        "ko": "손실 추이: {spark} {loss}{held_out}",
        "en": "Loss so far: {spark} {loss}{held_out}",
    },
    "finetune.status.curve_held_out": {"ko": " (검증 {loss})", "en": " (held-out {loss})"},
    "finetune.announce": {
        "ko": "학습 #{run}이(가) 끝났어요 ({trigger}, 시작: {by}): {result}",
        "en": "Fine-tune run #{run} has ended ({trigger}, started by {by}): {result}",
    },
    "finetune.announce.curve": {
        "ko": "손실 곡선을 첨부했어요 (파랑: 학습 손실, 주황: 검증 손실, 가로축: 단계).",
        "en": "Loss curve attached (blue: training loss, orange: held-out loss, across: steps).",
    },
    "finetune.trigger.manual": {"ko": "/finetune run", "en": "/finetune run"},
    "finetune.trigger.schedule": {"ko": "야간 학습", "en": "nightly"},
    "finetune.phase.starting": {"ko": "시작하는 중", "en": "starting"},
    "finetune.phase.dataset": {"ko": "데이터 준비 중", "en": "building the dataset"},
    "finetune.phase.loading": {"ko": "모델 불러오는 중", "en": "loading the model"},
    "finetune.phase.evaluating": {"ko": "평가 중", "en": "evaluating"},
    "finetune.phase.training": {"ko": "학습 중", "en": "training"},
    "finetune.phase.saving": {"ko": "저장 중", "en": "saving"},
    "finetune.status.last": {
        "ko": "마지막 학습 #{run} ({when}): {result}",
        "en": "Last run #{run} ({when}): {result}",
    },
    "finetune.result.succeeded": {
        "ko": "적용됨, 검증 loss {loss} (이전 {baseline}).",
        "en": "promoted, held-out loss {loss} (was {baseline}).",
    },
    "finetune.result.rejected": {
        "ko": "적용하지 않았어요 ({reason}).",
        "en": "not promoted ({reason}).",
    },
    "finetune.reason.too_few": {
        "ko": "학습 예시가 너무 적어요: {total}개 < 최소 {minimum}개. 빠진 답변: 학습 제외를 요청한 사람과의 대화 "
        "{opted_out}개, 제외된 채널 {excluded}개, 피드백 기준 {feedback}개",
        "en": "too few examples: {total} < {minimum}; left out: {opted_out} replies to people who opted out, "
        "{excluded} in excluded channels, {feedback} by feedback",
    },
    "finetune.reason.gate": {
        "ko": "평가 항목을 통과하지 못했어요, 아래 참고",
        "en": "a gate check failed, see below",
    },
    "finetune.reason.timeout": {
        "ko": "{seconds}초가 지나도 끝나지 않아 멈췄어요",
        "en": "timed out after {seconds} s",
    },
    "finetune.reason.trainer_stopped": {
        "ko": "학습 프로세스가 멈췄어요: {detail}",
        "en": "the trainer {detail}",
    },
    "finetune.reason.no_result": {
        "ko": "학습 프로세스가 결과를 남기지 않았어요: {detail}",
        "en": "the trainer left no readable result: {detail}",
    },
    "finetune.reason.crashed": {"ko": "오류가 났어요: {detail}", "en": "{detail}"},
    "finetune.reason.active_changed": {
        "ko": "학습하는 동안 사용 중인 LoRA가 바뀌어서 적용하지 않았어요",
        "en": "the active LoRA changed while this run trained; not promoting",
    },
    "finetune.reason.abandoned": {
        "ko": "학습 중에 봇이 멈췄어요",
        "en": "the bot stopped while this run was training",
    },
    "finetune.result.failed": {"ko": "실패했어요 ({reason}).", "en": "failed ({reason})."},
    "finetune.result.cancelled": {"ko": "중단되었어요.", "en": "cancelled."},
    "finetune.result.held": {
        "ko": "평가는 통과했지만 시험 중인 LoRA가 있어 후보로만 보관했어요 (검증 loss {loss}, 이전 {baseline}).",
        "en": "passed the gate but kept as a candidate, as a trial was going (held-out loss {loss}, was "
        "{baseline}).",
    },
    "finetune.sharing": {"ko": " (GPU: {mode})", "en": " (GPU: {mode})"},
    "finetune.sharing.pause": {"ko": "학습하는 동안 봇 일시 정지", "en": "the bot paused while training"},
    "finetune.sharing.separate": {"ko": "별도 장치에서 학습", "en": "trained on a separate device"},
    "finetune.sharing.shared": {
        "ko": "서비스 중인 GPU에서 답변과 함께 학습",
        "en": "trained on the serving GPU while the bot kept answering",
    },
    "finetune.status.trial": {
        "ko": "시험 중: LoRA {version}, {channels}에서 ({when}부터, {by}). 다른 채널은 위의 버전이에요. "
        "/finetune promote 로 적용, /finetune rollback 으로 시험 종료.",
        "en": "On trial: LoRA {version} in {channels} (since {when}, by {by}); every other channel gets the "
        "version above. /finetune promote applies it, /finetune rollback ends the trial.",
    },
    "finetune.status.candidate": {
        "ko": "후보: LoRA {version} (검증 loss {loss}, {when}), 적용 안 됨. /finetune try 로 이 채널에서 시험할 수 "
        "있어요.",
        "en": "Candidate: LoRA {version} (held-out loss {loss}, {when}), not promoted. /finetune try serves it in "
        "this channel.",
    },
    "finetune.status.active": {
        "ko": "사용 중: LoRA {version} (검증 loss {loss}, {when}부터).",
        "en": "In service: LoRA {version} (held-out loss {loss}, since {when}).",
    },
    "finetune.status.base": {
        "ko": "사용 중: 기본 모델 (LoRA 없음).",
        "en": "In service: the base model (no LoRA).",
    },
    "finetune.status.serving": {
        "ko": "사용 중: LoRA {version}.",
        "en": "In service: LoRA {version}.",
    },
    "finetune.status.not_serving": {
        "ko": "주의: 기록상 사용 중인 버전은 LoRA {version}이지만 이 봇은 지금 {serving}(으)로 답하고 있어요.",
        "en": "Warning: LoRA {version} is the active version on record, but this bot answers with {serving}.",
    },
    "finetune.status.folder_missing": {
        "ko": "그 버전의 폴더({path})가 없어요. 데이터 폴더(HANBOT_DATA_DIR) 설정을 확인해 주세요.",
        "en": "Its folder ({path}) is missing: check the data directory (HANBOT_DATA_DIR).",
    },
    "finetune.status.see_log": {
        "ko": "그 버전을 불러오지 못했어요. 봇 로그를 확인해 주세요.",
        "en": "It could not be loaded: see the bot's log.",
    },
    "finetune.status.prune": {
        "ko": "마지막 기록 정리 ({when}): 대화 {conversations}개에서 메시지 {removed}개 삭제.",
        "en": "Last history prune ({when}): {removed} messages removed from {conversations} conversations.",
    },
    # the quality gate's checks, one line each in /finetune status (bot.learning.gate.describe)
    "gate.verdict.passed": {"ko": "평가: 모든 항목 통과", "en": "Gate: every check passed"},
    "gate.verdict.failed": {
        "ko": "평가: 통과하지 못한 항목이 있어 적용하지 않았어요",
        "en": "Gate: not promoted, a check failed",
    },
    "gate.verdict.nothing_learned": {
        "ko": "평가: 배운 것이 없어요 (측정할 수 있는 변화가 없어 적용하지 않았어요)",
        "en": "Gate: nothing learned (no measurable change, not promoted)",
    },
    "gate.check.heldout_size": {
        "ko": "검증 세트: {examples}개 (최소 {needed}개 필요)",
        "en": "held-out split: {examples} examples (at least {needed} needed)",
    },
    "gate.check.learned": {
        "ko": "학습 효과: 검증 loss 변화 {change} (잡음 {noise})",
        "en": "learned something: held-out loss changed {change} (noise {noise})",
    },
    "gate.check.beats_base": {
        "ko": "기본 모델보다 나음: 검증 loss {new} vs {reference} (개선 {gain}, 필요 > {margin})",
        "en": "beats the base: held-out loss {new} vs {reference} (gain {gain}, needed > {margin})",
    },
    "gate.check.beats_active": {
        "ko": "사용 중인 버전보다 나음: 검증 loss {new} vs {reference} (개선 {gain}, 필요 > {margin})",
        "en": "beats the version in service: held-out loss {new} vs {reference} (gain {gain}, needed > {margin})",
    },
    "gate.check.pairs": {
        "ko": "질문에 맞는 답 고르기: {new} (기본 모델 {base}, 필요한 차이 > {margin}, {pairs}쌍)",
        "en": "picks each question's own answer: {new} of pairs (base {base}, needed > {margin} more, {pairs} pairs)",
    },
    "gate.check.general": {
        "ko": "일반 질문 보존: loss 변화 {increase} (한도 {bound}), 서로 다른 답 {distinct}개 "
        "(기본 모델 {base_distinct}개, 질문 {prompts}개)",
        "en": "general prompts kept: loss changed {increase} per token (bound {bound}), {distinct} different answers "
        "(base {base_distinct}, {prompts} prompts)",
    },
    "gate.check.active_heldout": {
        "ko": "{version}의 검증 세트: loss {new} vs {current} (악화 {worse}, 허용 ≤ {margin})",
        "en": "{version}'s held-out split: loss {new} vs {current} (worse by {worse}, allowed ≤ {margin})",
    },
    "gate.skipped.no_active": {"ko": "건너뜀: 사용 중인 LoRA 없음", "en": "skipped: no LoRA in service"},
    "gate.skipped.not_gated": {
        "ko": "건너뜀: {version}은(는) 이 평가를 통과해 적용된 버전이 아니에요",
        "en": "skipped: {version} was not promoted by this gate",
    },
    "gate.skipped.too_small": {
        "ko": "건너뜀: {version}의 검증 세트가 {examples}개뿐이에요 (최소 {needed}개)",
        "en": "skipped: {version}'s held-out split has only {examples} examples ({needed} needed)",
    },
    "gate.skipped.missing": {"ko": "측정값이 없어요", "en": "measurements missing"},
    "gate.skipped.no_prompts": {"ko": "건너뜀: 일반 질문 세트 없음", "en": "skipped: no general prompts"},
    "gate.failed.no_pairs": {
        "ko": "질문에 맞는 답 고르기: 검증 세트에 서로 다른 답이 없어 확인할 수 없어요",
        "en": "picks each question's own answer: no two different answers in the held-out split to compare",
    },
    "gate.name.heldout_size": {"ko": "검증 세트", "en": "held-out split"},
    "gate.name.learned": {"ko": "학습 효과", "en": "learned something"},
    "gate.name.beats_base": {"ko": "기본 모델보다 나음", "en": "beats the base"},
    "gate.name.beats_active": {"ko": "사용 중인 버전보다 나음", "en": "beats the version in service"},
    "gate.name.pairs": {"ko": "질문에 맞는 답 고르기", "en": "picks each question's own answer"},
    "gate.name.general": {"ko": "일반 질문 보존", "en": "general prompts kept"},
    "gate.name.active_heldout": {
        "ko": "사용 중인 버전의 검증 세트",
        "en": "the version in service's held-out split",
    },
    # the demo model's first build
    "demo.building": {
        "ko": "데모 모델을 처음 한 번 만드는 중: {phase} {percent}%",
        "en": "building the demo model (first run only): {phase} {percent}%",
    },
    "demo.phase.tokenizer": {"ko": "토크나이저", "en": "tokenizer"},
    "demo.phase.training": {"ko": "FAQ 학습", "en": "learning the FAQ"},
    "demo.phase.checking": {"ko": "답변 확인", "en": "checking the answers"},
    "cmd.persona.show": {
        "ko": "이 채널의 시스템 프롬프트예요 (메시지마다 {tokens}토큰, 예산 {budget}토큰 중):\n{prompt}",
        "en": "This channel's system prompt ({tokens} tokens of the {budget}-token budget, in every message):\n"
        "{prompt}",
    },
    "cmd.persona.show_default": {
        "ko": "이 채널은 기본 시스템 프롬프트를 써요 (메시지마다 {tokens}토큰, 예산 {budget}토큰 중). "
        "/persona set 으로 바꿀 수 있어요:\n{prompt}",
        "en": "This channel uses the default system prompt ({tokens} tokens of the {budget}-token budget, in every "
        "message); /persona set changes it:\n{prompt}",
    },
    "cmd.persona.set": {
        "ko": "이 채널의 시스템 프롬프트를 바꿨어요. 다음 메시지부터 쓰이고, 메시지마다 {tokens}토큰"
        "(예산 {budget}토큰 중)을 차지해요.",
        "en": "This channel's system prompt is set: it applies from the next message and takes {tokens} tokens of "
        "the {budget}-token budget in every message.",
    },
    "cmd.persona.cleared": {
        "ko": "이 채널의 시스템 프롬프트를 지웠어요. 다음 메시지부터 기본 프롬프트({tokens}토큰)를 써요.",
        "en": "This channel's system prompt is cleared: from the next message the default one ({tokens} tokens) "
        "applies.",
    },
    "cmd.persona.empty": {
        "ko": "새 시스템 프롬프트를 함께 적어 주세요: /persona set <프롬프트>",
        "en": "Please write the new system prompt after set: /persona set <prompt>",
    },
    "cmd.persona.too_long": {
        "ko": "시스템 프롬프트가 너무 길어요 ({tokens}토큰, 최대 {most}토큰). 대화가 들어갈 자리가 남도록 줄여 "
        "주세요.",
        "en": "That system prompt is too long ({tokens} tokens; at most {most}, so the conversation still fits). "
        "Please shorten it.",
    },
    "cmd.persona.usage": {
        "ko": "/persona show(보기), /persona set <프롬프트>(바꾸기), /persona clear(기본값으로) 중 하나를 써 주세요.",
        "en": "Please use /persona show, /persona set <prompt> or /persona clear.",
    },
    "cmd.forget_me.done": {
        "ko": "앞으로 당신의 메시지는 학습에 쓰이지 않아요. (/forget-me undo:yes 로 되돌릴 수 있어요.)",
        "en": "Your messages will no longer be used for training. (/forget-me undo:yes takes you back in.)",
    },
    "cmd.forget_me.undone": {
        "ko": "다시 학습에 참여하게 했어요. 저장되어 있는 당신의 메시지(제외되어 있던 동안 쓴 것도)가 다음 학습부터 "
        "쓰일 수 있어요. 이미 삭제한 메시지는 되살아나지 않아요.",
        "en": "You are back in: your stored messages, also those written while you were out, may be used from the "
        "next fine-tune on. Messages you deleted stay deleted.",
    },
    "cmd.forget_me.not_opted_out": {
        "ko": "학습에서 제외되어 있지 않았어요. 바뀐 것은 없어요.",
        "en": "You had not opted out of training: nothing changed.",
    },
    "cmd.forget_me.kept_out_by_settings": {
        "ko": "관리자 설정(finetune.opted_out_users)으로 학습에서 제외되어 있어서 여기서는 되돌릴 수 없어요. "
        "관리자에게 문의해 주세요.",
        "en": "An admin's setting (finetune.opted_out_users) keeps your messages out of training: only an admin "
        "can change that.",
    },
    "cmd.forget_me.undo_and_delete": {
        "ko": "delete와 undo는 함께 쓸 수 없어요. 하나만 골라 주세요.",
        "en": "delete and undo cannot go together: please choose one.",
    },
    "cmd.forget_me.already": {
        "ko": "이미 학습에서 제외되어 있어요.",
        "en": "You had already opted out of training.",
    },
    "cmd.forget_me.deleted": {
        "ko": "저장된 당신의 메시지 {count}개와 그에 대한 봇의 답변 {replies}개도 삭제했어요.",
        "en": "{count} of your stored messages and the bot's {replies} replies to them were deleted as well.",
    },
}


def language_of(text: str) -> Lang:
    """Korean if the text holds any Hangul, else English."""
    for ch in text:
        code = ord(ch)
        if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
            return "ko"
    return "en"


def say(key: str, lang: Lang = "en", **fields: object) -> str:
    entry = TEXTS.get(key) or TEXTS["error.generic"]
    return entry[lang].format(**fields)


def say_both(key: str, **fields: object) -> str:
    """Korean, then English: for places where the reader's language is unknown (slash-command errors)."""
    return f"{say(key, 'ko', **fields)}\n{say(key, 'en', **fields)}"
