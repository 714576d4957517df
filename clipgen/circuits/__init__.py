"""Neuron circuits of the zero-shot classifier: the RN chain (:mod:`.chain`), IG attribution of nodes and
edges (:mod:`.attribution`), the computation over (domain, class) entries (:mod:`.compute`), the circuits file
(:mod:`.store`), circuit graphs (:mod:`.graphs`) and node/circuit similarity (:mod:`.similarity`).

Nothing heavy is imported here: ``import clipgen.circuits`` stays cheap.
"""
