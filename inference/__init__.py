"""hanbot's engines: the local transformers engine, the remote OpenAI-compatible client, the engine server
(``python -m inference serve``) and fine-tuning. The first line names hanbot: ``bot.import_names`` checks it."""
