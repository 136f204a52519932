"""Fine-tune EDN's luminance-aware VQ-Diffusion decoder (reconstruction + λ2·L_VQ-Dif).

    accelerate launch training/train_decoder.py --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \
        --train_data_dir photos/ --output_dir edn-decoder

See `python training/train_decoder.py --help` and the README ("Fine-tune").
"""

from edn_pipeline.training.trainer import main

if __name__ == "__main__":
    main(stage="decoder")
