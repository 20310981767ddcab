"""Layer 3, scoring without Ray: what a run would do (planning), its options, and the scorers that
turn a batch of files into result rows. The Ray layer wires these; tests and benches call them as is.
"""
