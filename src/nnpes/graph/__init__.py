"""atoms → graph: host neighbour lists (vesin) and the on-device Verlet list side by side, graph
building, padding to fixed shapes, the training loader, and training-set statistics."""

from nnpes.graph.neighbors import HostNeighborList, neighbor_list  # noqa: F401  (first: data imports it)
from nnpes.graph.build import atoms_to_graph, edge_graph_index, edge_vectors, node_graph_index  # noqa: F401
from nnpes.graph.padding import batch, device_graph, ladder_size, pad_graph, pad_to_bucket, to_device  # noqa: F401
from nnpes.graph.loader import Buckets, GraphLoader, plan_batches  # noqa: F401
