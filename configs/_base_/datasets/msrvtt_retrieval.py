# MSR-VTT text-video retrieval, 9k/1k-A convention (JSFusion, Yu et al. ECCV 2018; CLIP4Clip): train on the
# 9k videos of MSRVTT_train.9k.csv, test on the 1,000 videos of MSRVTT_JSFUSION_test.csv, one sentence each.
# data/msrvtt/: MSRVTT_data.json (all 10k videos and 200k sentences, CLIP4Clip's file), the two CSVs, videos/.
_base_ = ['./msrvtt_caption.py']
train_dataloader = dict(
    dataset=dict(ann_file='MSRVTT_data.json', video_list='MSRVTT_train.9k.csv', split=()),
)
val_dataloader = dict(
    dataset=dict(ann_file='MSRVTT_data.json', video_list='MSRVTT_JSFUSION_test.csv', split=()),
)
test_dataloader = val_dataloader
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = val_evaluator
