"""Train EDN at any stage: ``--stage ccd``, ``decoder`` or ``joint`` (Eq. 1, L_dif + λ1·L_CCD + λ2·L_VQ-Dif).

    accelerate launch training/train_edn.py --stage joint --pretrained_model_name_or_path edn-model \
        --train_data_dir photos/ --output_dir edn-joint
"""

from edn_pipeline.training.trainer import main

if __name__ == "__main__":
    main()
