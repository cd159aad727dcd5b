"""The official MiniOneRec data layout as a TFDS dataset (`minirec_official/<category>`)."""

from minirec_jax.data.official.builder import KNOWN_CATEGORIES, MinirecOfficial, OfficialConfig
