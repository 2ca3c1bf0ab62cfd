# ALBEF COCO retrieval fine-tuning at 384 px from the 4M-image pretrained checkpoint (`ALBEF_4M.pth`, the
# paper's 4M rows): the same architecture as the 14M config; only the starting weights differ.
#   python tools/model_converters/albef_to_toolkit.py ALBEF_4M.pth \
#       data/pretrained/albef/ALBEF_4M_384.safetensors --img-size 384 --drop-mlm-head
# (salesforce/ALBEF released no 4M retrieval fine-tuned checkpoint.)
_base_ = ['./albef_vit-b16-bert-base_14m-ft_coco-retrieval-384.py']
load_from = 'data/pretrained/albef/ALBEF_4M_384.safetensors'
