"""textdistill: distill a fine-tuned BERT text classifier into a tiny, fast student."""

__version__ = "0.1.0"
