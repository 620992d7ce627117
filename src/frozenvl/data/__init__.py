"""frozenvl.data: webdataset shards for pairs, interleaved pages, videos and evaluation records; streaming
loaders with a resumable position; converters; the synthetic world."""

from frozenvl.data.formats import (
    caption_record,
    classification_record,
    decode_sample,
    interleaved_sample,
    interleaved_text,
    pair_sample,
    retrieval_record,
    video_qa_record,
    video_sample,
    vqa_record,
)
from frozenvl.data.loader import LoaderConfig, ShardDataset, StreamingLoader, approx_token_count
from frozenvl.data.shards import ShardWriter, expand_shards, read_shard
from frozenvl.data.skips import BadSample, SkipCounter
from frozenvl.data.synth import WorldConfig, generate_world

__all__ = [
    "BadSample", "LoaderConfig",
    "ShardDataset", "ShardWriter", "SkipCounter", "StreamingLoader", "WorldConfig", "approx_token_count",
    "caption_record", "classification_record", "decode_sample", "expand_shards", "generate_world",
    "interleaved_sample", "interleaved_text", "pair_sample", "read_shard",
    "retrieval_record", "video_qa_record", "video_sample", "vqa_record",
]
