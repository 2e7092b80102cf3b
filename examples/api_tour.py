# %% [markdown]
# # A tour of the Python API
#
# Labelled tiles from the model shipped in the package, in memory and on disk. Run it as a script
# (`python examples/api_tour.py`) or cell by cell in an editor that understands `# %%` cells. It needs only
# the lean runtime (`pip install -e .`); the plot at the end uses matplotlib when it is installed.

# %%
from pathlib import Path

import numpy as np

from histosmith import Generator, QCPolicy

gen = Generator.from_pretrained()  # the shipped "hgsc-64"; Generator.open("runs/export") for your own
print(gen)

# %% [markdown]
# ## Tiles with the counts you ask for
# Nuclei per class and a tissue; every tile is reproducible from `(seed, index)`.

# %%
tiles = gen.generate(8, counts={"neoplastic": 15, "inflammatory": 5}, tissue="tumour_nest", seed=0)
print("images", tiles.images.shape, tiles.images.dtype, "instance maps", tiles.instances.shape)
for requested, measured in zip(tiles.requested, tiles.counts, strict=True):
    print("requested", requested.tolist(), "measured", measured.tolist())

# %% [markdown]
# ## The same tiles, or more of them, on disk
# `generate_to` writes the CoNIC layout in shards and resumes after a crash; with `qc`, tiles whose counts
# miss the request by more than 20 % are sampled again (up to four samples per tile).

# %%
out = Path("runs/api-tour")
if not out.exists():
    result = gen.generate_to(out, 32, balance=True, seed=1, qc=QCPolicy(tolerance=0.2, attempts=4))
    print(f"wrote {result.n_tiles} tiles to {result.out} in {result.seconds:.1f} s")

# %% [markdown]
# ## Another sampler
# The model's default sampler and step count were chosen by the quality gate (`print(gen)` shows them);
# any other can be asked for. Fewer steps are faster; the gate says which still match the paper's pipeline.

# %%
for sampler, steps in (("ddim", 50), ("unipc", 10)):
    t = gen.generate(4, seed=0, sampler=sampler, steps=steps)
    print(f"{sampler:>6} {steps:>2} steps: mean nuclei per tile {t.counts.sum(1).mean():.1f}")

# %% [markdown]
# ## Look at them

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    fig, axes = plt.subplots(2, 8, figsize=(16, 4))
    for i in range(8):
        axes[0, i].imshow(tiles.images[i])
        axes[1, i].imshow(np.where(tiles.instances[i] > 0, tiles.classes[i], 0), cmap="tab10", vmin=0, vmax=9)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.savefig("runs/api-tour.png", dpi=80, bbox_inches="tight")
    print("figure: runs/api-tour.png")
