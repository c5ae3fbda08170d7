"""Compressors: images (or any data) -> low-dimensional summaries for the flows.

One interface: ``fit(x, theta=None, ...)`` (returns self), ``encode(x) -> (n, k)``,
``save(path)`` / ``load_compressor(path)``, and ``as_embedding()`` (or passing the fitted
compressor as ``NPE(prior, embedding=compressor)``) for a frozen NPE embedding.

>>> from sbikit.compressors import PCA, AutoEncoder, VAE, Contrastive, Regression
>>> pca = PCA(8).fit(x)                 # x: (n, 32, 32)
>>> s = pca.encode(x)                   # (n, 8)
"""

from sbikit.compressors.augment import Augment
from sbikit.compressors.autoencoder import AutoEncoder
from sbikit.compressors.base import Compressor, FrozenEmbedding, load_compressor
from sbikit.compressors.cnn import ConvDecoder, ConvEncoder
from sbikit.compressors.contrastive import Contrastive, nt_xent, vicreg
from sbikit.compressors.pca import PCA
from sbikit.compressors.regression import Regression
from sbikit.compressors.vae import VAE

__all__ = [
    "Augment",
    "AutoEncoder",
    "Compressor",
    "Contrastive",
    "ConvDecoder",
    "ConvEncoder",
    "FrozenEmbedding",
    "PCA",
    "Regression",
    "VAE",
    "load_compressor",
    "nt_xent",
    "vicreg",
]
