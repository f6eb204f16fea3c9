"""The paper's model: candidate ops, cell planning, genotypes, the search supernet and the evaluation networks."""
