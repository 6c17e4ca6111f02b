"""Text: corpora, the joint vocabulary, batching (``data``), the loss both loops share
(``output_loss``), re-training, beam search, evaluation and loading a trained run. It never
reaches into the search loop."""
