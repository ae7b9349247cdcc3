"""The retraining methods: base (Context, rounds), oneshot, iterative, distill; registry (name -> recipe)."""
