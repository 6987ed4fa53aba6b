#!/usr/bin/env python3
"""Regenerates assets/chitchat/chitchat-0.9.0.jsonl.gz, the corpus embedded in
the newllm binary (used when no corpus is given).

Source: the PyPI package chitchat-dataset 0.9.0 (MIT, BYU PCC lab's Chit-Chat
Challenge: real human-human chats). How to run, from the repo root:

    pip download chitchat-dataset==0.9.0 --no-deps -d /tmp/chitchat
    python3 scripts/make_chitchat_corpus.py /tmp/chitchat/chitchat_dataset-0.9.0-py3-none-any.whl

The argument may also be the package's dataset.json itself.

Output format: gzip'd JSONL in the Hugging Face chat layout UltraChat uses,
one conversation per line:
    {"id": "<uuid>", "messages": [{"content": "...", "role": "user"}, ...]}

Choices (keep them in sync with src/data/corpus.rs docs):
- Order: conversations in the order they appear in the package's
  dataset.json (a JSON object keyed by conversation UUID; Python's json keeps
  file order). No shuffling, no filtering: every conversation is kept.
- One message = one speaker turn (the package's inner list of consecutive
  utterances by the same sender); its utterances' "text" are joined with "\n",
  verbatim (no stripping, empty utterances kept).
- Roles alternate "user", "assistant", "user", ... starting with the first
  turn; the script checks that consecutive turns really have different senders.
- The gzip header carries no file name and mtime 0, so reruns are byte-identical.
"""
import gzip
import io
import json
import sys
import zipfile

OUT = "assets/chitchat/chitchat-0.9.0.jsonl.gz"
ROLES = ("user", "assistant")


def load(path):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as whl:
            return json.loads(whl.read("chitchat_dataset/dataset.json"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    data = load(sys.argv[1])
    lines = []
    for conv_id, conv in data.items():
        messages = []
        for i, turn in enumerate(conv["messages"]):
            senders = {u["sender"] for u in turn}
            assert len(senders) == 1, f"{conv_id}: turn {i} mixes senders"
            if i > 0:
                assert turn[0]["sender"] != conv["messages"][i - 1][0]["sender"], (
                    f"{conv_id}: turns {i - 1} and {i} have the same sender"
                )
            content = "\n".join(u["text"] for u in turn)
            messages.append({"content": content, "role": ROLES[i % 2]})
        assert messages, f"{conv_id}: no messages"
        lines.append(json.dumps({"id": conv_id, "messages": messages}, ensure_ascii=False))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    with open(OUT, "wb") as f:
        f.write(buf.getvalue())
    print(f"wrote {OUT}: {len(lines)} conversations, {len(raw)} bytes raw, "
          f"{len(buf.getvalue())} bytes gzip")


if __name__ == "__main__":
    main()
