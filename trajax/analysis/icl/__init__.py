"""In-context learning on BIG-bench (Xia et al. 2023, §5 and App. D), one module per concern.

  bigbench   the task reader: tasks, subtasks, multiple-choice examples, prompt fields
  prompts    k-shot prompts and their tokenised (prompt, option) requests
  scoring    the log-probability of every option given its prompt
  metrics    grading, accuracy, option PPL, aggregation, linearity / breakthroughness
  figures    Fig. 5 (right), 8, 9, 17/18 and summary.json
  study      `run`: every checkpoint of a trajectory, resumable (what launch/icl.py calls)
"""
