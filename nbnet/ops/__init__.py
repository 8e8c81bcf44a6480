"""Operations on trained models: batch prediction, serving, monitoring, promotion, rollback, update, plots."""
