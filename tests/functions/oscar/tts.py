"""A stand-in for text-to-speech: one 8 kHz square-wave beep per character."""

import os
import wave


def synthesise(text: str, path: str) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        for char in text:
            period = 8 + ord(char) % 32
            out.writeframes(bytes(200 if (i // period) % 2 else 56 for i in range(400)))


if __name__ == "__main__":
    with open(os.environ["INPUT_FILE_PATH"], encoding="utf-8") as f:
        synthesise(f.read(), os.path.join(os.environ["TMP_OUTPUT_DIR"], "speech.wav"))
