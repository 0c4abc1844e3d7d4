"""The four privacy analyses of the original CEHR-GPT, with its flags and defects fixed, and memorisation.

- :mod:`.attribute_inference`: does a synthetic look-alike reveal a patient's sensitive concepts?
- :mod:`.member_inference`: can an attacker tell training patients from held-out ones?
- :mod:`.nearest_neighbor_inference`: nearest-neighbour adversarial accuracy and its privacy loss.
- :mod:`.reid_inference`: re-identification risk over generalised quasi-identifiers.
- :mod:`.memorization`: synthetic patients that copy a training patient, and distances to closest records.
- :mod:`.config`: derive the common / sensitive concept lists from training data by prevalence.
"""
