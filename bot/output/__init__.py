"""Everything the bot sends to Telegram: replies streamed as drafts or edits, formatting, buttons, the pace of
requests within Telegram's limits, and the repair of answers a stop cut short."""
