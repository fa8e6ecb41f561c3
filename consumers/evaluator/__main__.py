"""`python -m consumers.evaluator`: the evaluator, configured by environment (EVALUATOR_*, KAFKA_*)."""

from consumers.evaluator.service import EvaluatorSettings, run_evaluator
from shared.lifecycle import run_guarded
from shared.settings import KafkaSettings

if __name__ == "__main__":
    run_guarded(lambda: run_evaluator(EvaluatorSettings(), KafkaSettings()))
