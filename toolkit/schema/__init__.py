"""Schema checks of annotation files: the checks of each format (:mod:`.annotations`: COCO instances and
captions, LVIS v1, MSR-VTT and MSRVTT-QA), the error and helpers they share (:mod:`.base`), loading a file
and the pre-flight scan of the files it references (:mod:`.files`)."""
