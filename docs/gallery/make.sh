#!/usr/bin/env bash
# README's gallery: a GIF of each zoo agent, made by enjoy.py from the zoo file (run from the repository's root).
# 144x144 pixels, the first 120 frames of the first evaluation episode (a moving floor compresses badly): under 1 MB.
set -euo pipefail
gif() {  # zoo file, steps
  python enjoy.py "zoo/$1.pt" --episodes 1 --max-steps "$2" --video-scale 0.3 --video "docs/gallery/$1.gif"
}
gif sac_HalfCheetah-v4_100k_seed1 120
gif ppo_Hopper-v4_1M_seed1 600
