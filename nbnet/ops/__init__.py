"""Operations on trained models: batch prediction, serving, ONNX export, monitoring, promotion, rollback, update, plots."""
