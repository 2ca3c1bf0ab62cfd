"""Detection data: COCO/LVIS data sets with prompt vocabularies and open-vocabulary splits; prompts."""
