"""Fake model servers (OpenAI, Anthropic) that tests run the gateway against."""
