"""One assistant response: the LLM stream, speech out, item sequencing, the turn record."""
