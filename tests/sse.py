"""Reading server-sent events the way an OpenAI client does."""

import json


def read_events(response) -> list:
    """Parsed `data:` payloads of a streamed response, `[DONE]` kept as the string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
