"""What G2D learns from: the pooling attention, the pseudo-mask derived from it and the decoder's prediction.

For a few test images of a trained G2D bundle (2D: the radiograph; 3D: the axial slice through the volume's centre)
this draws one row each: the image, the head-mean attention upsampled to the image, the pseudo-mask (the training
target: 85th percentile inside the body mask, smoothed) and the pre-trained decoder's sigmoid output.

    python scripts/g2d_masks_figure.py run --bundle g2d_cxr --overlays "['demo']" --ckpt_dir bundles/g2d_cxr/models \\
        --out bundles/g2d_cxr/docs/pseudo_masks.png
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import fire
import torch

REPO = Path(__file__).resolve().parents[1]


def _parser(bundle: str, overlays: Sequence[str], ckpt_dir: str | None):
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.yaml"), *(str(configs / f"{o}.yaml") for o in overlays)])
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    if ckpt_dir is not None:
        parser["ckpt_dir"] = os.path.abspath(ckpt_dir)
    return parser


def _view(panel: torch.Tensor) -> torch.Tensor:
    """A 2D view of ``(H, W)`` (as stored) or of ``(X, Y, Z)`` RAS (the axial slice through the middle, rows = Y)."""
    return panel if panel.ndim == 2 else panel[..., panel.shape[-1] // 2].T


def run(bundle: str = "g2d_cxr", overlays: Sequence[str] = ("demo",), ckpt_dir: str | None = None,
        out: str = "pseudo_masks.png", num_cases: int = 4, split: str = "test") -> str:
    """Draw the figure for ``num_cases`` records of ``split``; returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from monai.transforms import Compose

    from common.data.contract import load_datalist
    from common.networks.weights import load_weights

    parser = _parser(bundle, list(overlays), ckpt_dir)
    model = load_weights(parser.get_parsed_content("model"), parser.get_parsed_content("model_path")).eval()
    decoder = load_weights(parser.get_parsed_content("decoder"), parser.get_parsed_content("decoder_path")).eval()
    pseudo_mask = parser.get_parsed_content("pseudo_mask")
    transform = Compose([*parser.get_parsed_content("image_preprocessing"), parser.get_parsed_content("body_mask")])
    records = load_datalist(parser.get_parsed_content("datalist"), split)[:num_cases]
    figure = Figure(figsize=(10, 2.6 * len(records)))
    titles = ("image", "pooling attention (head mean)", "pseudo-mask (target)", "decoder output")
    tower = model.image_encoder
    for row, record in enumerate(records):
        item = transform(dict(record))
        image, body = item["image"][None].float(), item["body"][None].float()
        with torch.no_grad():
            pyramid = tower.backbone.features(image)
            _, attention = tower.pool(tower.project(pyramid[-1]), return_attention=True)
            mask = pseudo_mask(attention, image.shape[2:], body)
            upsampled = torch.nn.functional.interpolate(
                attention.mean(1, keepdim=True), size=image.shape[2:], mode="bilinear" if image.ndim == 4 else "trilinear"
            )
            prediction = torch.sigmoid(decoder(pyramid))
        panels = (image, upsampled, mask, prediction)
        for col, (panel, title) in enumerate(zip(panels, titles)):
            ax = figure.add_subplot(len(records), 4, 4 * row + col + 1)
            ax.imshow(_view(panel[0, 0]).cpu().numpy(), cmap="gray" if col in (0, 2) else "magma")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    FigureCanvasAgg(figure)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110, bbox_inches="tight")
    print(out)
    return out


if __name__ == "__main__":
    fire.Fire({"run": run})
