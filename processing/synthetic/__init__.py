"""The demo's emotional speech corpus: built-in sentences spoken in five emotions by offline TTS engines."""
