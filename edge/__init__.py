"""edge: an asyncio edge runtime that delivers AWS Secrets Manager secrets to devices."""
