"""Membership-inference attacks, their metrics (ROC, TPR@FPR, AOP, CIs) and shadow models."""
