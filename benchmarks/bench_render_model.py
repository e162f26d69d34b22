"""`sabun render model` speed: renders per second for skinned humanoids of about 30k and 100k triangles.

    python benchmarks/bench_render_model.py [--sizes 512 768 1024] [--triangles 30000 100000]

The models are made by sabun's procedural humanoid (`sabun.avatar.humanoid`) and written as VRM
1.0, so the whole path is measured: load the file, pose it (arms at sides, which skins the mesh
once per candidate arm angle), upload, then draw 16 shots (front / left / right / behind at the
four zooms) in the toon style with outlines, 2x supersampling and 4x MSAA, and encode the PNGs.
Printed per model and size: the time to load + pose, the time per shot, the whole 16-shot job,
and the peak resident memory of the process so far. The aim: the 16 shots of one model at 768 px
in under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image

from sabun.avatar.camera import ZOOMS, camera_for
from sabun.avatar.gltf import load_avatar
from sabun.avatar.humanoid import HumanoidSpec, build_humanoid, segments_for_triangles
from sabun.avatar.pose import pose_avatar
from sabun.avatar.raster import Renderer, composite, gl_context
from sabun.avatar.write import write_glb

VIEWS = ("front", "left", "right", "behind")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(path: Path, size: int) -> dict:
    start = time.perf_counter()
    avatar = load_avatar(path)
    posed = pose_avatar(avatar, "arms-at-sides")
    prepared = time.perf_counter()
    shots = 0
    with Renderer(avatar, posed, "toon", size) as renderer:
        uploaded = time.perf_counter()
        for view in VIEWS:
            for zoom in ZOOMS:
                pixels = composite(renderer.draw(camera_for(posed, avatar, view, zoom)), (1.0, 1.0, 1.0))
                Image.fromarray(pixels).save(io.BytesIO(), format="PNG")
                shots += 1
    done = time.perf_counter()
    return {
        "triangles": avatar.triangle_count(),
        "size": size,
        "load_pose_s": prepared - start,
        "upload_s": uploaded - prepared,
        "per_shot_s": (done - uploaded) / shots,
        "job_s": done - start,
        "shots_per_s": shots / (done - start),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024])
    parser.add_argument("--triangles", type=int, nargs="+", default=[30000, 100000])
    args = parser.parse_args()
    gl_context()  # context creation (~0.4 s) is paid once per process, not per model
    with tempfile.TemporaryDirectory() as folder:
        print(
            f"{'triangles':>9} {'size':>5} {'load+pose s':>11} {'upload s':>8} {'s/shot':>7} {'16 shots s':>10} "
            f"{'shots/s':>7} {'peak RSS MB':>11}"
        )
        for target in args.triangles:
            spec = HumanoidSpec(segments=segments_for_triangles(target))
            path = write_glb(build_humanoid(spec), Path(folder) / f"humanoid_{target}.vrm")
            for size in args.sizes:
                r = bench(path, size)
                print(
                    f"{r['triangles']:>9} {r['size']:>5} {r['load_pose_s']:>11.2f} {r['upload_s']:>8.2f} {r['per_shot_s']:>7.3f} "
                    f"{r['job_s']:>10.2f} {r['shots_per_s']:>7.2f} {r['peak_rss_mb']:>11.0f}"
                )


if __name__ == "__main__":
    main()
