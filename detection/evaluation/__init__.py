"""Detection metrics: COCO AP on the base and novel categories of an open-vocabulary split."""
