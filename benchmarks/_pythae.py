"""pythae 0.1.2's side of the benchmarks: its MLP networks for the Fashion-MNIST recipe (784-512-512-32, the same
layers as hf_vae's MLP backbone) and a dataset that binarises each example anew at every read, pythae's way.

pythae is installed without its dependencies (`pip install --no-deps --target DIR pythae==0.1.2`), so that it
brings neither torchvision nor another torch; `pythae_mlp_pieces(DIR)` puts DIR on the path.
"""

import sys

import torch
import torch.nn as nn


def pythae_mlp_pieces(pythae_site=None):
    """(Encoder, Decoder, Binarised) classes, or raises ImportError when pythae is missing or pulled torchvision."""
    if pythae_site and pythae_site not in sys.path:
        sys.path.insert(0, pythae_site)
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    if "torchvision" in sys.modules:
        raise ImportError("pythae imported torchvision: it must be installed with --no-deps")

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
            self.mu, self.logvar = nn.Linear(512, 32), nn.Linear(512, 32)

        def forward(self, x):
            h = self.net(x)
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                     nn.Linear(512, 784), nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).view(-1, 1, 28, 28))

    class Binarised(BaseDataset):  # pythae reads one example at a time: a new binarisation at each read
        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]))

    return Encoder, Decoder, Binarised


def pythae_mlp_discriminator(hidden_dims, pythae_site=None):
    """A pythae discriminator of hf_vae's VAE-GAN shape (flatten -> [Linear -> ReLU] per hidden size -> Linear ->
    sigmoid), pythae's `Discriminator_MLP` with other widths; its layers are numbered from 1 as pythae's are."""
    if pythae_site and pythae_site not in sys.path:
        sys.path.insert(0, pythae_site)
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDiscriminator

    class Discriminator(BaseDiscriminator):
        def __init__(self):
            super().__init__()
            layers, width = [], 784
            for hidden in hidden_dims:
                layers.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU()))
                width = hidden
            layers.append(nn.Sequential(nn.Linear(width, 1), nn.Sigmoid()))
            self.layers = nn.ModuleList(layers)
            self.depth = len(layers)

        def forward(self, x, output_layer_levels=None):
            output, out = ModelOutput(), x.reshape(x.shape[0], -1)
            for level, layer in enumerate(self.layers, start=1):
                out = layer(out)
                if output_layer_levels is not None and level in output_layer_levels:
                    output[f"embedding_layer_{level}"] = out
            output["embedding"] = out
            return output

    return Discriminator()

