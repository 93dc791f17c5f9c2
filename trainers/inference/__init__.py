"""Talking to a trained model: the multi-turn chat API, the terminal chat and the web app."""

from trainers.inference.chat import BlspEmoChat, ChatInputError, ChatStream, ChatTurn

__all__ = ["BlspEmoChat", "ChatInputError", "ChatStream", "ChatTurn"]
