"""The BBC News topic classifier (BiLSTM), one module per step:

data        the corpus (<topic>/<nnn>.txt or CSV), duplicate groups, the grouped stratified split
tokenizer   regex word tokenizer and vocabulary (both copied into the manifest)
embeddings  LSA word vectors of the training split, to initialise the embedding
model       ClassifierConfig and TextClassifier
train       the training loop (knows nothing of Optuna)
baseline    TF-IDF + linear SVM, the bar to beat
report      metrics and plots of a run
pipeline    load_split, fit, run_training: what train-, search- and cv-classifier share
cli         train-classifier          search      search-classifier
export      export-classifier         evaluate    evaluate-classifier
predict     predict-classifier
"""
