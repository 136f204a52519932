"""Fine-tune EDN's CCD adapter (L_dif + λ1·L_CCD).

    accelerate launch training/train_ccd.py --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \
        --train_data_dir photos/ --output_dir edn-ccd

See `python training/train_ccd.py --help` and the README ("Fine-tune").
"""

from edn_pipeline.training.trainer import main

if __name__ == "__main__":
    main(stage="ccd")
