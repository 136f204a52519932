#!/usr/bin/env bash
# edn-tiny: a miniature EDN trained from scratch on the training split of shared/data/photos, on CPU.
#
#   bash training/recipes/edn_tiny.sh ../shared/data/photos edn-tiny
#
# Split: every photo of shared/data/photos except bsd100/img_09* and urban100/img_09* (held out, never trained
# on), with clothing/ thinned to every second photo: 2,335 photos. Captions: the subject where the data set names
# it ("a photo of a <ImageNet class>", "... of a bee", "... of a garment", else "a photo") and the photo's dominant
# basic colour terms ("..., mostly yellow and green"). All stages use seed 0. Each stage checkpoints and resumes
# (--resume_from_checkpoint latest), so the recipe can be run again after an interruption. Wall times go to
# $WORK/timings.json (benchmarks/quality_tiny.py --timings prints them).
set -euo pipefail
PHOTOS=${1:?path to shared/data/photos}
WORK=${2:-edn-tiny}
export HF_HUB_OFFLINE=1 ACCELERATE_USE_CPU=1
LAUNCH=(python -m accelerate.commands.launch --cpu --num_processes 1)
COMMON=(--train_data_dir "$WORK/data" --resolution 128 --seed 0 --random_crop --dataloader_num_workers 1
        --checkpointing_steps 100 --checkpoints_total_limit 2 --resume_from_checkpoint latest
        --training_data_description "2,335 photos of shared/data/photos: BSD100 and Urban100 without img_09*, BSDS500 train and test, the ImageNet sample, hymenoptera and half of clothing (research data sets, non-commercial terms)")

# timed NAME STEPS BATCH COMMAND...: run a stage and add its wall time to $WORK/timings.json
timed() {
  local name=$1 steps=$2 batch=$3 start=$SECONDS
  shift 3
  "$@"
  python - "$WORK/timings.json" "$name" "$steps" "$batch" "$((SECONDS - start))" <<'EOF'
import json, os, sys
path, name, steps, batch, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
stages = json.load(open(path))["stages"] if os.path.exists(path) else []
entry = next((s for s in stages if s["stage"] == name), None)
if entry is None:
    stages.append({"stage": name, "steps": steps, "batch_size": batch, "seconds": seconds})
else:  # a resumed stage: its time adds up
    entry.update(steps=steps, batch_size=batch, seconds=entry["seconds"] + seconds)
json.dump({"stages": stages}, open(path + ".tmp", "w"), indent=1)
os.replace(path + ".tmp", path)
EOF
}

# 0. the training folder with colour-word captions, the tokenizer (BPE learned from the captions) and the
#    untrained SD-shaped base
[ -d "$WORK/base" ] || python training/recipes/build_tiny_base.py --photos "$PHOTOS" --data "$WORK/data" --base "$WORK/base"

# 1. the autoencoder (there is no pretrained SD VAE at this size), trained together with the luminance-aware
#    decoder: the decoder sees the gray image, so the latent carries colour, not structure; L1 + 1 · L1 on a*b*
timed vae 800 8 "${LAUNCH[@]}" training/train_edn.py --stage vae --pretrained_model_name_or_path "$WORK/base" \
  --output_dir "$WORK/vae" "${COMMON[@]}" --train_batch_size 8 --learning_rate 5e-4 --lr_scheduler cosine \
  --lr_warmup_steps 50 --max_train_steps 800 --vae_decoder luminance --chroma_weight 1
#    ... and on at 64 px (the later --resolution wins): a quarter of the cost per photo, and colour is a coarse
#    signal; a heavier a*b* term. After 800 steps at 128 px the chroma error was still falling steadily. The shipped
#    run was started with --max_train_steps 1200 and, to leave time for stage 3, stopped at step 500 (resumed with
#    500, which exports); a run of this line from scratch decays the learning rate over 500 steps instead.
timed vae-64px 500 16 "${LAUNCH[@]}" training/train_edn.py --stage vae --pretrained_model_name_or_path "$WORK/vae" \
  --output_dir "$WORK/vae64" "${COMMON[@]}" --resolution 64 --train_batch_size 16 \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 20 --max_train_steps 500 --vae_decoder luminance \
  --chroma_weight 4

#    ... and on with the first two latent channels held to each 8×8 cell's mean a*b* (--latent_chroma_weight): the
#    latent then carries colour by construction, and the decoder only spreads it along the gray image's edges.
#    Without it, the encoder's latent held the cells' colours so loosely that a quadratic read-out recovered
#    26.1 dB where the cells' true a*b* give 32.0 dB (20 training photos).
timed vae-colour 1000 16 "${LAUNCH[@]}" training/train_edn.py --stage vae --pretrained_model_name_or_path "$WORK/vae64" \
  --output_dir "$WORK/vae-colour" "${COMMON[@]}" --resolution 64 --train_batch_size 16 \
  --learning_rate 5e-4 --lr_scheduler cosine --lr_warmup_steps 20 --max_train_steps 1000 --vae_decoder luminance \
  --chroma_weight 4 --latent_chroma_weight 1

# 2. the VQ-Diffusion stage of the decoder: a codebook started at latent vectors of the photos (4,096 codes: every
#    sample passes through the quantiser, so its error caps the model), the decoder tuned to quantised latents, the
#    token refiner
timed decoder 200 8 "${LAUNCH[@]}" training/train_decoder.py --pretrained_model_name_or_path "$WORK/vae-colour" --decoder_vq \
  --codebook_size 4096 --vq_num_train_timesteps 50 --refiner_layers 2 --refiner_dim 128 \
  --output_dir "$WORK/decoder" "${COMMON[@]}" --train_batch_size 8 --learning_rate 2e-4 --lr_scheduler cosine \
  --lr_warmup_steps 20 --max_train_steps 200

# 3. the CCD adapter together with the UNet (no pretrained prior at this size): L_dif. Half the hinted examples get
#    the paper's superpixel regions (30-50 %), half 1-50 points as users click, 20 % none; captions stay 70 % of the
#    time (so colour words are learned), 10 % are empty (guidance's unconditional branch). λ1 = 0: L_CCD decodes
#    every step's x̃_0 at 128 px, which would make each step about three times as long. The CCD's condition input
#    starts random, not zero: with a zero start the condition was still unused after 500 steps.
timed ccd 1400 16 "${LAUNCH[@]}" training/train_ccd.py --pretrained_model_name_or_path "$WORK/decoder" --train_unet \
  --output_dir "$WORK/ccd" "${COMMON[@]}" --train_batch_size 16 --learning_rate 3e-4 --lr_scheduler cosine \
  --lr_warmup_steps 100 --max_train_steps 1400 --lambda_ccd 0 --hint_ratio 0.3 0.5 --no_hint_prob 0.2 \
  --point_hint_prob 0.5 --generic_prompt_prob 0.3 --proportion_empty_prompts 0.1 --ccd_condition_init random

# 3b. the token refiner alone (issue 18), everything else frozen, on the tokens of the training photos: it runs at
#    the latent size, so its steps are cheap. The decoder stage's 200 steps left a refiner that cost 4.1-5.1 dB when
#    used; 400 steps at 1e-3 then 1,500 at 5e-4 bring that to 0.04 dB (3 steps, temperature 0.6, held-out photos).
#    It ships off (--vq-inference-steps 0): no setting measured so far gains over no refinement.
timed refiner 400 16 "${LAUNCH[@]}" training/train_edn.py --stage refiner --pretrained_model_name_or_path "$WORK/decoder" \
  --output_dir "$WORK/refiner" "${COMMON[@]}" --train_batch_size 16 --learning_rate 1e-3 --lr_scheduler cosine \
  --lr_warmup_steps 20 --max_train_steps 400 --vq_aux_weight 1
timed refiner-long 1500 16 "${LAUNCH[@]}" training/train_edn.py --stage refiner \
  --pretrained_model_name_or_path "$WORK/refiner" --output_dir "$WORK/refiner-long" "${COMMON[@]}" --seed 1 \
  --train_batch_size 16 --learning_rate 5e-4 --lr_scheduler cosine --lr_warmup_steps 20 --max_train_steps 1500 \
  --vq_aux_weight 1

# 3c. the adapter and UNet trained on for 8,000 steps, from stages 3 and 3b as the package held them (float16):
#    - on four cached views of every photo (--cache_views: examples and VAE latents made once, 7 minutes), so a
#      step runs at the latent size: 37 samples/s over the run (41 alone) against stage 3's 8.7;
#    - with each latent channel scaled to zero mean and unit variance (--per_channel_latents): under the VAE's one
#      scaling factor the two colour channels had a std of 0.25-0.31 and the fourth a mean of +2, so the noise
#      drowned the colour after 73 of the 1,000 timesteps and samples from noise came out as coloured blotches.
python training/recipes/ship_tiny.py --model "$WORK/ccd" --decoder "$WORK/refiner-long/decoder" \
  --default-strength 0.05 --vq-inference-steps 0 --out "$WORK/stage3"
timed ccd-cached 8000 16 "${LAUNCH[@]}" training/train_ccd.py --pretrained_model_name_or_path "$WORK/stage3" --train_unet \
  --output_dir "$WORK/ccd-cached" "${COMMON[@]}" --dataloader_num_workers 0 --checkpointing_steps 250 \
  --cache_views 4 --per_channel_latents --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine \
  --lr_warmup_steps 100 --max_train_steps 8000 --lambda_ccd 0 --hint_ratio 0.3 0.5 --no_hint_prob 0.2 \
  --point_hint_prob 0.5 --generic_prompt_prob 0.3 --proportion_empty_prompts 0.1

# 3d. the same, on v instead of ε (--prediction_type v_prediction), from stage 3c as the package held it. Under
#    ε-prediction an error in the predicted clean latent x̃_0 is weighed by the SNR: at t = 900, where a sample's
#    colours are decided, 0.014, against 8.45 at t = 100, so the adapter learned to leave the hint channels unread
#    (10 hints lowered its x̃_0 colour error at t = 900 by 6 %). Under v-prediction it is weighed by SNR + 1; a
#    1,500-step trial lowered that error by 38 % with the same hints. The shipped run was started with
#    --max_train_steps 3000 and, to leave time for steps 4-6, stopped at its checkpoint of step 2000 (resumed with
#    --max_train_steps 2000, which exports): its learning rate had decayed to a quarter of the peak. A run of this
#    line from scratch decays it over 2,000 steps instead.
python training/recipes/ship_tiny.py --model "$WORK/ccd-cached" --default-strength 0.05 --vq-inference-steps 0 \
  --out "$WORK/stage3c"
timed ccd-v 2000 16 "${LAUNCH[@]}" training/train_ccd.py --pretrained_model_name_or_path "$WORK/stage3c" --train_unet \
  --output_dir "$WORK/ccd-v" "${COMMON[@]}" --dataloader_num_workers 0 --checkpointing_steps 250 \
  --cache_views 4 --prediction_type v_prediction --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine \
  --lr_warmup_steps 100 --max_train_steps 2000 --lambda_ccd 0 --hint_ratio 0.3 0.5 --no_hint_prob 0.2 \
  --point_hint_prob 0.5 --generic_prompt_prob 0.3 --proportion_empty_prompts 0.1

# 3e. the step that strength < 1 runs, trained (--hinted_start_prob), from stage 3d as the package held it: half the
#    examples start where inference starts, from the VAE latent of the photo as its hints colour it (the gray photo
#    without hints) noised to t = 100-400, and learn the v whose clean-latent estimate is the photo's own latent; the
#    other half keep plain L_dif. Before it, the denoiser's estimate from that start was worse than the start (every
#    strength above 0.05 scored lower), so edn-tiny was its autoencoder's copy of the hint map. The shipped run was
#    started with --max_train_steps 4000 and stopped at its checkpoint of step 2000 (the tuning photos' scores had
#    not moved since step 250: 19 BSD100 training photos, 5 steps from t = 81, K=0 / K=10 23.84 / 27.10 at step 250,
#    23.89 / 27.11 at 1,500), resumed with --max_train_steps 2000, which exports; a run of this line from scratch
#    decays the learning rate over 2,000 steps instead.
python training/recipes/ship_tiny.py --model "$WORK/ccd-v" --default-strength 0.05 --vq-inference-steps 0 \
  --out "$WORK/stage3d"
timed ccd-hinted 2000 16 "${LAUNCH[@]}" training/train_ccd.py --pretrained_model_name_or_path "$WORK/stage3d" \
  --train_unet --output_dir "$WORK/ccd-hinted" "${COMMON[@]}" --dataloader_num_workers 0 --checkpointing_steps 250 \
  --cache_views 4 --train_batch_size 16 --learning_rate 1e-4 --lr_scheduler cosine --lr_warmup_steps 50 \
  --max_train_steps 2000 --lambda_ccd 0 --hint_ratio 0.3 0.5 --no_hint_prob 0.2 --point_hint_prob 0.5 \
  --generic_prompt_prob 0.3 --proportion_empty_prompts 0.1 --hinted_start_prob 0.5 --hinted_start_timesteps 100 400

# 3f. (dropped) the colour words' meanings: stage 3f trained only the token embeddings of ten colour terms
#    (--train_word_embeddings, on a folder oversampling photos of rare terms), which made every term steer toward its
#    colour (72 % -> 100 % of (photo, term) pairs on 19 BSD100 training photos) but pushed the whole photo toward one
#    hue (naming a photo's colours +0.37 -> +0.19 dB on the held-out photos). Since stage 3h's palette prior places
#    the named colours, stage 3e's embeddings do better than 3f's: naming each photo's colours +0.35 against
#    +0.31 dB on those training photos and +1.44 against +1.27 dB on 20 garment photos left out of training, 100 % of
#    pairs steered either way. Stages 3g and 3h read no text, so they train the same from stage 3e as from 3f.
python training/recipes/ship_tiny.py --model "$WORK/ccd-hinted" --default-strength 0.05 --vq-inference-steps 0 \
  --out "$WORK/stage3e"

# 3g. the learned hint propagator (--stage propagator), every other network frozen: a small convolutional network
#    embeds every pixel of the gray image and each pixel takes the hints' a*b* weighted by how alike its embedding is
#    to theirs, or stays neutral; it replaces Levin's solve in the adapter's hint map (same confidence channel, same
#    relighting). It never sees a colour, only which pixels belong together, so it learns from these photos what
#    carries over to others, where the colour prior of the stages above memorised them. 96 px crops (about the
#    scale of a whole photo at the 128 px working size). The shipped run started from the package's edn-tiny, then
#    stage 3f's output in float16, whose networks are stage 3e's.
timed propagator 1000 16 "${LAUNCH[@]}" training/train_edn.py --stage propagator \
  --pretrained_model_name_or_path "$WORK/stage3e" --output_dir "$WORK/propagator" "${COMMON[@]}" --resolution 96 \
  --train_batch_size 16 --learning_rate 2e-3 --lr_scheduler cosine --lr_warmup_steps 50 --max_train_steps 1000

# 3h. the colour-word prior (--stage palette), every other network frozen: the same kind of gray-image trunk gives
#    every pixel a logit and a saturation per basic colour term; each term has one learned hue. Trained on the colour
#    terms each crop's own ground truth names (colour_terms, as the captions name them), so at inference a prompt
#    naming terms ("a photo, mostly blue") gets a map placing them, which enters the adapter's condition where a hint
#    map would when the image has no hints. It chooses between the colours named, rather than guessing colours, so
#    it carries over to photos it never saw. Started from stage 3g's output (the shipped run: from the package's
#    edn-tiny, stage 3g's output in float16; 31 min). Naming each photo's own colours, without hints, with stage
#    3e's words: +0.32 dB on the held-out photos (+1.01 on the 5 named by a chromatic term, +0.06 on the 13 named
#    only by black, white or gray, which the pipeline leaves to the text encoder: with the prior's gray map -0.11),
#    +1.54 dB on 20 garment photos left out of training, +0.46 dB on 19 BSD100 training photos (with stage 3f's
#    words and the prior on every named term +0.31; its step-300 checkpoint +0.40, a 300-step run +0.28).
timed palette 1000 16 "${LAUNCH[@]}" training/train_edn.py --stage palette \
  --pretrained_model_name_or_path "$WORK/propagator" --output_dir "$WORK/palette" "${COMMON[@]}" --resolution 96 \
  --train_batch_size 16 --learning_rate 2e-3 --lr_scheduler cosine --lr_warmup_steps 50 --max_train_steps 1000

# 4. inference defaults, chosen on 12 training photos (never on the held-out ones): the share of the noise schedule
#    run from the photo as its hints colour it, with no hints and with 10; on the model as it ships (float16 weights,
#    token refinement off)
python training/recipes/ship_tiny.py --model "$WORK/palette" --default-strength 1.0 --vq-inference-steps 0 \
  --out "$WORK/candidate"
mkdir -p "$WORK/tuning"
for photo in $(ls "$PHOTOS"/bsds500-train/*.jpg | head -12); do ln -sf "$(realpath "$photo")" "$WORK/tuning/"; done
for strength in 0.05 0.1 0.15; do
  python benchmarks/quality_tiny.py --data "$WORK/tuning" --model "$WORK/candidate" --hint-counts 0,10 --skip-words \
    --steps 50 --max-side 256 --strength "$strength" --json "$WORK/tuning-$strength.json"
done

# 5. into the package (float16 diffusers weights, loaded back as float32), where `edn colorize` finds it, with the
#    strength of the highest mean PSNR over K=0 and K=10 in step 4 (the shipped run: 0.05 28.46 dB, 0.1 28.28,
#    0.15 27.99; before stage 3g 28.25, 28.06, 27.76). Step 4 runs 50 steps, the pipeline's default, since stage 3e: at 0.05 that is two steps, from
#    t = 21, where the trained step now corrects the start; at 20 steps it would be one step from t = 1, where it
#    cannot (0.05 28.14, 0.1 28.05, 0.2 27.31, 0.3 26.92, 0.5 26.50). Before stage 3e, at 20 steps:
#    0.05 28.13, 0.1 28.01, 0.2 27.87, 0.3 27.75, 0.5 27.45; before stage 3d 28.13, 28.07, 28.00, 27.90, 27.51; before
#    stage 3c 28.10, 27.81, 27.49, 27.19, 26.43. The decoder is stage 3b's, which every later stage carried.
python training/recipes/ship_tiny.py --model "$WORK/palette" --default-strength 0.05 --vq-inference-steps 0 \
  --out edn_pipeline/edn-tiny

# 6. the figures of its model card (held-out photos): the table, the hint curve and the before/after grid
python benchmarks/quality_tiny.py --data "$PHOTOS" --model edn_pipeline/edn-tiny --timings "$WORK/timings.json" \
  --json docs/quality_tiny.json --curve docs/hint_curve.png --grid docs/before_after.png
