"""hanbot's platform adapters: Discord, Slack and the console. The first line names hanbot: ``bot.import_names``
checks it."""
