"""The Sherlock Holmes character-level LSTM generator, one module per step:

data        character vocabulary, contiguous split, parallel streams and BPTT chunks
model       CharConfig and CharRNN (explicit recurrent state)
train       truncated-BPTT training loop (knows nothing of Optuna)
cli         train-generator           search      search-generator
export      export-generator          evaluate    evaluate-generator
generate    generate
"""
