"""Small reference students for the analytic setting (CPU-sized)."""

from pfd.distill.trajectory import ExactFlowMap, TrajectoryMap, TrajectoryStudent, exact_pairs, train_trajectory_student

__all__ = ["ExactFlowMap", "TrajectoryMap", "TrajectoryStudent", "exact_pairs", "train_trajectory_student"]
