#!/usr/bin/env bash
# edn-tiny: a miniature EDN trained from scratch on the training split of shared/data/photos, on CPU.
#
#   bash training/recipes/edn_tiny.sh ../shared/data/photos edn-tiny
#
# Split: every photo of shared/data/photos except bsd100/img_09* and urban100/img_09* (held out, never trained
# on): 1,546 photos. Captions: "a photo of a <class>" for the ImageNet sample (from its file names), none
# otherwise (generic prompts then). All stages use seed 0. Each stage checkpoints and resumes
# (--resume_from_checkpoint latest), so the recipe can be run again after an interruption.
set -euo pipefail
PHOTOS=${1:?path to shared/data/photos}
WORK=${2:-edn-tiny}
export HF_HUB_OFFLINE=1 ACCELERATE_USE_CPU=1
LAUNCH=(python -m accelerate.commands.launch --cpu --num_processes 1)
COMMON=(--train_data_dir "$WORK/data" --resolution 128 --seed 0 --random_crop --dataloader_num_workers 1
        --checkpointing_steps 100 --checkpoints_total_limit 2 --resume_from_checkpoint latest
        --training_data_description "1,546 photos of shared/data/photos: BSD100 and Urban100 without img_09*, BSDS500 train and test, the ImageNet sample (research data sets, non-commercial terms)")

# 0. the training folder, the tokenizer (BPE learned from the captions) and the untrained SD-shaped base
[ -d "$WORK/base" ] || python training/recipes/build_tiny_base.py --photos "$PHOTOS" --data "$WORK/data" --base "$WORK/base"

# 1. the autoencoder (there is no pretrained SD VAE at this size)
"${LAUNCH[@]}" training/train_edn.py --stage vae --pretrained_model_name_or_path "$WORK/base" \
  --output_dir "$WORK/vae" "${COMMON[@]}" --train_batch_size 8 --learning_rate 5e-4 --lr_scheduler cosine \
  --lr_warmup_steps 100 --max_train_steps 1500

# 2. the luminance-aware VQ-Diffusion decoder, from the trained VAE decoder
"${LAUNCH[@]}" training/train_decoder.py --pretrained_model_name_or_path "$WORK/vae" --decoder_vq \
  --codebook_size 512 --vq_num_train_timesteps 50 --refiner_layers 2 --refiner_dim 128 \
  --output_dir "$WORK/decoder" "${COMMON[@]}" --train_batch_size 8 --learning_rate 2e-4 --lr_scheduler cosine \
  --lr_warmup_steps 50 --max_train_steps 800

# 3. the CCD adapter together with the UNet (no pretrained prior at this size): L_dif + 0.1·L_CCD.
#    The shipped run was started with --max_train_steps 20000 and, to fit the time there was, resumed with 4500
#    at step 1600 and with 3600 at step 2100 (each time the cosine schedule was recomputed from there); a run of
#    this line from scratch differs from it only in the learning rate of steps 200-2100.
"${LAUNCH[@]}" training/train_ccd.py --pretrained_model_name_or_path "$WORK/decoder" --train_unet \
  --output_dir "$WORK/ccd" "${COMMON[@]}" --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine \
  --lr_warmup_steps 200 --max_train_steps 3600 --hint_ratio 0.3 0.5 --no_hint_prob 0.1 --generic_prompt_prob 0.5

# 4. inference defaults, chosen on 16 training photos (never on the held-out ones): the share of the noise schedule
#    run from the photo's latent, and the decoder's token refinement steps
edn evaluate --model "$WORK/ccd" --data "$WORK/data" --limit 16 --strength 0.5 --vq-steps 0 \
  --sweep strength=0.3,0.5,0.7,1.0 --sweep vq_steps=0,2,20 --markdown "$WORK/defaults.md"

# 5. into the package (float16 diffusers weights, loaded back as float32), where `edn colorize` finds it
python training/recipes/ship_tiny.py --model "$WORK/ccd" --default-strength 0.5 --vq-inference-steps 0 \
  --out edn_pipeline/edn-tiny

# 6. the figures of its model card (held-out photos) and the README's before/after picture
python benchmarks/quality_tiny.py --data "$PHOTOS" --model edn_pipeline/edn-tiny --grid docs/before_after.png
