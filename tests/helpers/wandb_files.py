"""Reads back an offline W&B run from its local files, with no W&B server or API.

An offline run is one `run-<id>.wandb` file: W&B's record log (the LevelDB log
framing: 7-byte header, then 32 KiB blocks of chunks, each with a crc32, a
length and a full/first/middle/last type) holding `wandb_internal_pb2.Record`
protobufs. This reads the config, every history row and the final summary.
"""

import glob
import json
import os
import struct
import zlib

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path):
  from wandb.proto import wandb_internal_pb2

  with open(path, "rb") as f:
    data = f.read()
  ident, magic, _ = struct.unpack("<4sHB", data[:7])
  assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B record log"
  pos, pending = 7, b""
  while pos + 7 <= len(data):
    left = BLOCK - pos % BLOCK
    if left < 7:  # a block's tail too short for a chunk header is padding
      pos += left
      continue
    crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if kind == 0:
      pos += left
      continue
    chunk = data[pos + 7 : pos + 7 + length]
    assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad crc"
    pos += 7 + length
    pending += chunk
    if kind in (FULL, LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      yield record


def _key(item) -> str:
  return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(wandb_dir) -> dict:
  """{'id', 'config', 'history': [row, ...], 'summary'} of the one offline run under wandb_dir."""
  (path,) = glob.glob(os.path.join(str(wandb_dir), "wandb", "offline-run-*", "run-*.wandb"))
  run = {"id": None, "config": {}, "history": [], "summary": {}}
  for record in _records(path):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      run["id"] = record.run.run_id
      for item in record.run.config.update:
        run["config"][_key(item)] = json.loads(item.value_json)
    elif kind == "history":
      run["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
    elif kind == "summary":
      for item in record.summary.update:
        run["summary"][_key(item)] = json.loads(item.value_json)
  return run
