"""Command-line tools of ped_sam_ros (demo, evaluation, bag helpers)."""
