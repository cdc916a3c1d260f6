"""Random transformers T5 encoders and a toy T5 fast tokenizer: the oracles of the T5 tests."""

import tokenizers
import torch
import transformers

# Pieces of a toy SentencePiece vocabulary; T5's specials come first, as in spiece.model.
_PIECES = ['▁', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'l', 'n', 'o', 'r', 's', 't',
           'u', '▁gold', 'fish', '▁ten', 'ch', '▁great', '▁white', '▁shark', '▁a']


def hf_encoder(feed_forward_proj: str, vocab_size: int = 40, seed: int = 0):
  """A random transformers T5EncoderModel small enough for a test; the relative position
  buckets reach both the logarithmic range and the max_distance cap at 16 tokens."""
  config = transformers.T5Config(
      vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
      relative_attention_num_buckets=32, relative_attention_max_distance=12,
      feed_forward_proj=feed_forward_proj, dropout_rate=0.0, attn_implementation='eager')
  torch.manual_seed(seed)
  model = transformers.T5EncoderModel(config).eval()
  with torch.no_grad():  # norms start at 1: randomise them too.
    for name, p in model.named_parameters():
      if name.endswith('layer_norm.weight'):
        p.copy_(0.5 + torch.rand_like(p))
  return model


def hf_tokenizer() -> 'transformers.T5TokenizerFast':
  """A T5 fast tokenizer (Unigram over '▁'-marked words, </s> appended) on a toy vocab."""
  vocab = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0)]
  vocab += [(p, -float(i + 1)) for i, p in enumerate(_PIECES)]
  tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=2))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  tok.decoder = tokenizers.decoders.Metaspace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single='$A </s>', special_tokens=[('</s>', 1)])
  return transformers.T5TokenizerFast(tokenizer_object=tok, pad_token='<pad>',
                                      eos_token='</s>', unk_token='<unk>', extra_ids=0)

