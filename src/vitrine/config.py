"""All tunable settings in one typed place: defaults, then a TOML file, then overrides.

A store keeps the configuration it was built with in ``store/config.toml`` so that the same
store answers the same way on another machine. Overrides use dotted keys
(``index.factory=HNSW32``), the form the CLI's ``--set`` flag takes.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import tomli_w

from vitrine.errors import VitrineError


@dataclass
class EncoderConfig:
    text: str = "minilm"
    """Text backbone: a registered name, or ``sentence-transformers:/local/path``."""
    image: str = "efficientnet-lite0@288"
    """Image backbone: a registered name, ``@SIZE`` for its input resolution (288 keeps the detail of
    ~350 px phone photos: linear-probe accuracy on Grocery val 0.736 at 288 vs 0.679 at 224, 0.740 at 320)."""
    batch_size: int = 32
    num_workers: int = 2
    """DataLoader processes that decode and resize images while the model runs."""
    threads: int = 0
    """Torch and ONNX Runtime intra-op threads; 0 means one per core."""
    runtime: str = "onnx"
    """What runs the frozen backbones: ``onnx`` (exported once to ONNX Runtime, 2-4x faster on CPU;
    falls back to PyTorch for what cannot be exported) or ``torch``. Training always uses PyTorch."""
    cache: bool = True
    """Keep image features of files (catalog images, query photos given as paths) in ``STORE/cache``."""
    cache_texts: bool = False
    """Cache text features too: for batch work over a fixed corpus, not for a live service."""


@dataclass
class EmbeddingConfig:
    kind: str = "zeroshot"
    """``zeroshot`` (pretrained backbones, block fusion) or ``trained`` (the towers in ``models/<model>``)."""
    model: str = "default"
    image_weight: float = 0.5
    """Share of a product vector's squared norm given to its image block (zero-shot fusion)."""
    zero_shot_weight: float = 0.0
    """With trained embeddings: weight w of the frozen backbones' zero-shot vectors served beside the
    towers' (``vitrine.embedding.ensemble``), so every score is (1 - w) * trained + w * zero-shot. Helps
    products and queries unlike the training data (new products, other groups) at the cost of a wider
    index (the zero-shot block adds the backbones' widths). 0 = the towers alone."""
    also: str = ""
    """With trained embeddings: more trained models of this store (comma-separated names in ``models/``) served
    beside ``model``, each with its own zero-shot block if ``zero_shot_weight`` > 0, every model's score counting
    equally. Models on different backbones (``vitrine train --image-encoder``) err differently, so their sum
    ranks better than any one of them, at one more backbone pass per query. Vector channel only."""

    def models(self) -> list[str]:
        """``model`` first, then ``also``'s names."""
        return [self.model, *(name.strip() for name in self.also.split(",") if name.strip())]


@dataclass
class TrainingConfig:
    """Contrastive training of the towers on frozen, cached backbone features."""

    objective: str = "contrastive"
    """``contrastive`` (InfoNCE) or ``prototype`` (prototype-ID recognition, see ``PrototypeConfig``)."""
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-4
    dim: int = 256
    hidden: int = 1024
    dropout: float = 0.1
    image_projection: str = "mlp"
    """``mlp``: photos enter the space through a trained projection (to ``dim``); ``none``: the image backbone's
    pooled features are the space as they are (``dim`` becomes their width, no Matryoshka prefixes), moved only
    by fine-tuned blocks (stage 3, ``unfreeze_blocks``) while the text towers learn to map into it."""
    image_dropout: float = 0.2
    """Dropout on the frozen image features: augmentation in feature space for photos, which come in
    runs of near-identical shots. Chosen on Grocery val among 0, 0.2, 0.5 (R@1 0.750, 0.774, 0.730);
    on text features it hurt CrowdFlower, so text features get none."""
    image_views: int = 0
    """Extra views of every training photo (random crops of 50-100% of its area, fixed per photo and view,
    encoded once and cached); a step shows each photo as one of its views or itself, at random. 0 = off:
    each photo only as it was shot."""
    matryoshka: str = "64,128"
    """Extra prefix sizes trained to work on their own (comma-separated; empty = off)."""
    temperature: float = 0.05
    learn_temperature: bool = True
    symmetric: bool = True
    modal_gate: bool = True
    memory_bank: int = 0
    """Past product embeddings kept as extra negatives (0 = off)."""
    memory_max_age: int = 200
    hard_negatives: int = 0
    """Negatives mined per query from the current model's index (0 = off)."""
    hard_refresh: int = 50
    keyword_pairs: bool = True
    keyword_weight: float = 0.5
    keyword_mask: float = 0.6
    """Keyword Jaccard overlap at which two products count as the same item (above 1 = off)."""
    min_positive_grade: int = 2
    """Pairs graded below this (0-3 scale) are not used as positives."""
    ngram_buckets: int = 0
    """Add a learned embedding of hashed word 1-2-grams and character 3-grams to both text towers, with
    this many hash buckets (0 = off; 262144 = 2^18 is a good size): Amazon's semantic product search
    (Nigam et al., 2019). It gives model numbers, sizes and words of other languages vectors of their own."""
    ngram_idf: bool = False
    """Weight n-grams by inverse document frequency over the training catalog (rare tokens count more)."""
    ngram_lr_scale: float = 10.0
    """Learning rate of the n-gram table relative to ``lr``: each of its rows is updated only in the
    steps whose texts contain that n-gram (sparse Adam), so rows need larger steps to move."""
    unfreeze_blocks: int = 0
    """Fine-tune the image backbone's top N blocks with the towers (0 = frozen backbone). Their
    input maps are cached like any feature, so an epoch costs only the top's forward and backward. With the
    prototype objective this is stage 1; stage 2 keeps the blocks as stage 1 left them and stage 3 trains them on
    (``prototype.stage3_unfreeze`` must then be N). One block is issue 3's recipe for products never trained on."""
    unfreeze_text_layers: int = 0
    """Fine-tune the text model's top N transformer layers with the towers (0 = frozen). The token states
    entering them are cached (48 tokens a text), so an epoch costs only those layers. With the prototype
    objective this is stage 1; stage 2 keeps the layers as stage 1 left them and stage 3 trains them on."""
    backbone_lr_scale: float = 0.1
    """Learning rate of the unfrozen backbone blocks and layers, relative to ``lr`` (pretrained weights move slowly)."""
    lr_schedule: str = "constant"
    """How every learning rate moves over a run: ``constant``, or ``cosine`` (half a cosine from the set rates
    down to zero at the last step of ``epochs``, updated every step; a resumed run continues where it stood).
    A cosine run trains all ``epochs`` and keeps its last weights: dev MRR is reported, it picks no epoch."""
    visual_task: str = "none"
    """Self-supervised image loss added to training: none, masked-contrastive or masked-regression
    (needs ``unfreeze_blocks`` > 0)."""
    visual_weight: float = 0.5
    visual_batch: int = 32
    """Query photos per step that also feed the visual task."""
    mask_ratio: float = 0.5
    dev_fraction: float = 0.1
    """Share of the training queries held back to pick the best epoch (early stopping); 0 = off."""
    patience: int = 4
    """Stop after this many epochs without a better dev score."""
    nproc: int = 1
    """Training processes (torch DDP, gloo on CPU): each takes a shard of every batch (the batch size
    stays the global one) and sees the others' products as negatives; 1 = train in this process."""
    seed: int = 0


@dataclass
class IndexConfig:
    factory: str = "auto"
    """``auto`` (exact below ``hnsw_threshold`` vectors, HNSW above) or any FAISS factory string."""
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_vectors: str = "fp16"
    """How ``auto``'s HNSW graph stores the vectors: ``fp16`` (784 bytes per 256-d vector), ``float32``
    (1,296) or ``sq8`` (528). On 10^6 benchmark vectors at efSearch 128, fp16 recalled as much as float32
    (0.970 vs 0.968) and answered 1.3x more queries per second; sq8 needs efSearch 192 for 0.96."""
    ef_construction: int = 200
    ef_search: int = 128
    nprobe: int = 32
    """IVF indexes: inverted lists visited per query (FAISS's default of 1 loses most neighbours)."""
    refine_k_factor: float = 10.0
    """Factories with a refine stage (``IVF1024,PQ64,Refine(SQfp16)`` or ``...,RFlat``): the compressed
    index proposes ``k × refine_k_factor`` candidates and FAISS re-scores them with the refine copy of the
    vectors (float16 or float32), keeping the best ``k``. PQ codes alone rank neighbours poorly; re-scoring
    a deeper candidate list recovers them."""
    compact_ratio: float = 0.25
    """Rebuild the index once this share of its entries are deleted."""
    filter_exact_max: int = 50_000
    """A filtered search over at most this many allowed entries scores them all (exact); above it the
    index's own search runs with an ID selector, and rows it cannot fill fall back to the exact scan."""
    uri: str = ""
    """Where vectors live: empty = FAISS files in ``STORE/index``; ``milvus://host:port/collection`` for a
    Milvus cluster; a path ending in ``.db`` (relative to ``STORE/index``) for embedded milvus-lite."""
    collection: str = "vitrine"
    """Milvus collection when the URI does not name one (milvus-lite paths)."""
    milvus_index: str = "FLAT"
    """Milvus index type: FLAT (exact), HNSW or IVF_FLAT (milvus-lite supports FLAT and IVF_FLAT)."""
    milvus_batch: int = 5_000
    """Vectors per Milvus insert/delete call: each call has a fixed cost, so calls are batched."""
    milvus_attributes: bool = True
    """Keep each product's attributes (with its id and group) in the Milvus collection, so search filters
    run inside Milvus as boolean expressions; off: the catalog evaluates them and Milvus gets the allowed
    ids. Applies when a collection is created (``vitrine index --rebuild`` recreates one that lacks them)."""
    entries: str = "product"
    """``product``: one vector per product (its images averaged); ``image``: one vector per image (with
    the product's text), results grouped so each product appears once, at its best image's score."""


@dataclass
class SearchConfig:
    k: int = 10
    max_k: int = 1000
    max_query_chars: int = 1000
    lexical: bool = False
    """Fuse BM25 results with vector results (``fusion``) for queries with text."""
    fusion: str = "convex"
    """How the vector and BM25 channels are fused: ``convex`` (each channel's scores min-max normalised over
    its candidates, then a weighted sum; keeps how far apart a channel's candidates are) or ``rrf``
    (reciprocal rank fusion, ranks only). Convex since session 12: better on every model measured
    (Shopee mAP@10 +0.010 to +0.013, CrowdFlower NDCG@10 +0.013 to +0.029; BENCHMARKS.md)."""
    fusion_depth: int = 100
    """Candidates each channel contributes to the fusion."""
    rrf_k: int = 60
    modifier_depth: int = 100
    """Retrieved candidates that score modifiers (popularity, price...) re-order."""
    group_overfetch: int = 4
    """With one entry per image, entries fetched per wanted product before grouping (deeper if short)."""
    channel: str = "vector"
    """Default retrieval channel: ``vector`` (embeddings) or ``prototype`` (ID recognition with the
    trained prototype head; see ``vitrine train --objective prototype``)."""
    juice_query: bool = False
    """Crop query photos to their salient region before encoding (``vitrine.governance``'s vision branch):
    robustness to clutter around the product, at the cost of one more backbone pass per photo."""
    querybank: bool = True
    """Apply the store's query bank, once one is fitted (``vitrine querybank STORE QUERIES``): vector scores
    become ``s - r_p / 2``, ``r_p`` a product's hubness over the bank (CSLS; ``vitrine.engine.querybank``)."""
    querybank_k: int = 10
    """Bank queries whose cosines make up a product's hubness (the k of CSLS, whose authors use 10)."""
    querybank_depth: int = 100
    """Results per bank query read when fitting (exact once it reaches the number of products)."""
    querybank_overfetch: int = 50
    """Extra vector results fetched per search under a query bank, so products it lifts can reach the top k."""


@dataclass
class GovernanceConfig:
    """Data governance (``vitrine govern``): the sieve baseline and DataJuicer's juicing."""

    model: str = ""
    """Trained towers under ``models/`` that judge the data (empty = the store's ``embedding.model``)."""
    sieve_drop: float = 0.2
    """Share of samples the sieve drops (the lowest scores)."""
    quality_weight: float = 0.3
    """Share of the sieve score that comes from quality signals (the rest is image-text alignment)."""
    saliency: str = "energy"
    """Saliency map: ``energy`` (activation norm of the last feature map; found the drawn object in clutter
    where CAM did not) or ``cam`` (class activation of the ImageNet head's likely classes)."""
    image_size: int = 288
    """Short side the saliency network sees (the whole photo, not a centre crop)."""
    saliency_threshold: float = 0.5
    """A feature-map cell is salient at this share of the map's maximum."""
    crop_margin: float = 0.12
    """Margin added around the salient box, as a share of the image side."""
    min_crop_side: float = 0.4
    """The crop never gets narrower than this share of the image side (keeps context for tiny boxes)."""
    crops: str = "add"
    """What a salient crop does to its sample: ``add`` (keep the photo and add the crop as one more sample of
    the same product), ``replace`` the photo, or ``better`` (replace it only where the judging model finds
    the crop closer to the product than the photo). ``add`` was chosen on Grocery val, the one dataset with
    photos: it beat raw and sieved data in both protocols, where ``replace`` and ``better`` did not."""
    imagenet_min_prob: float = 0.15
    """ImageNet labels kept as object classes from this softmax probability."""
    imagenet_top: int = 3
    tag_vocabulary: int = 300
    """Catalog keywords (TF-IDF, ``vitrine.training.keywords``) that zero-shot tags are chosen from."""
    tag_top: int = 3
    tag_min_score: float = 0.2
    """Cosine in the trained space a keyword needs to be tagged on a photo."""
    enhance_min_share: float = 0.3
    """A tag is added to a product's text when this share of its photos carry it."""
    enhance_tags: int = 3
    boilerplate_min_products: int = 8
    """A sentence or line found in this many products' texts is boilerplate (learned from the catalog)."""
    spec_min_lines: int = 3
    """A text with this many ``Key: value`` lines carries a spec sheet; its numeric lines are dropped."""
    lexicon: str = ("click here,free shipping,shop now,buy now,best seller,best price,limited time,order now,"
                    "satisfaction guaranteed,money back guarantee,while supplies last,see details,"
                    "measurement guide,size chart,new arrival,hot sale,100% brand new,brand new")
    """Promotional phrases always removed (comma-separated), on top of what the catalog statistics find."""
    report_samples: int = 12
    """Originals and crops shown in the report's grid."""
    batch_size: int = 16
    seed: int = 0


@dataclass
class ServeConfig:
    """The HTTP service (``vitrine serve``): where it listens, who may write, what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "VITRINE_API_KEY"
    """Environment variable holding the key that write endpoints require (``--api-key`` wins over it).
    Without a key, writes are refused: a shop opts in to them."""
    read_requires_key: bool = False
    """Also require the key for searches and product pages (an internal service)."""
    max_request_bytes: int = 16_000_000
    """Refused (413) before the body is read past this many bytes."""
    max_upload_bytes: int = 8_000_000
    """One image, after base64 decoding."""
    max_pixels: int = 40_000_000
    """Width x height of one uploaded image, checked before decoding (decompression bombs)."""
    max_images: int = 8
    """Images on one product."""
    max_query_chars: int = 500
    max_k: int = 100
    encode_slots: int = 1
    """Requests running the models at once; the rest wait their turn instead of fighting for the cores."""
    queue_timeout: float = 10.0
    """Seconds a request may wait for a model slot before it is answered 503 (busy)."""
    warm_up: bool = True
    """Load the models and run one text and one photo query before serving, so the first shopper does not wait."""
    save_delay: float = 2.0
    """Seconds after a write before the index files are saved (writes in between share one save).
    The catalog commit is the durable acknowledgement; a lost index save is replayed at start-up."""


@dataclass
class RerankConfig:
    """The Pailitao-VL reranker (``vitrine.rerank``): what ``search(rerank=...)`` and ``train-reranker`` use."""

    model: str = "rerank"
    """Reranker folder under ``models/``."""
    strategy: str = "hybrid"
    """Default strategy when a search asks for reranking without naming one:
    ``hybrid``, ``listwise``, ``pointwise`` or ``sliding``; ``auto`` (at training time) picks whichever of
    pointwise, listwise and hybrid has the best NDCG@10 on the held-back training queries."""
    candidates: int = 50
    """Retrieved candidates handed to the reranker (K)."""
    chunk_size: int = 10
    """Candidates one listwise forward pass compares (M)."""
    stride: int = 5
    """Sliding-window baseline: how far the window moves (back to front)."""
    dim: int = 64
    """Width of the listwise transformer and the pointwise MLP."""
    layers: int = 1
    """Transformer blocks of the chunk model. One: on the held-back training queries the hybrid ranked
    within the seeds' spread of two blocks (NDCG@10, mean of 3 seeds: Grocery 0.849 vs 0.855, CrowdFlower
    0.861 vs 0.861), and the model takes two thirds of the time to serve (BENCHMARKS.md)."""
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 64
    """Chunks (listwise) per step; pointwise steps take the same chunks flattened."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    tau: float = 1.0
    """Temperature of the pairwise and NULL losses."""
    null_weight: float = 1.0
    absolute_weight: float = 1.0
    retrieval_prior: bool = True
    """Start every score from the retriever's order (a learned multiple of the standardised retrieval
    score plus a correction whose last layer starts at zero) and learn corrections to it; ``false``:
    heads start at random, as in the paper, and must learn the retriever's order too."""
    absolute_prior: str = "retrieval"
    """With the retrieval prior, where the absolute scorer's level logits start: ``retrieval`` (the
    retriever's order) or ``local`` (the chunk model's own local score from the same pass, detached), so
    that r, which the hybrid merges chunks by, agrees with the order inside each chunk until trained
    otherwise. ``retrieval`` stays the default: the held-back training queries preferred it on both
    datasets, although val did not (BENCHMARKS.md)."""
    runtime: str = "onnx"
    """What runs a served reranker's models: ``onnx`` (ONNX Runtime, exported on first use) or ``torch``."""
    threads: int = 1
    """ONNX Runtime intra-op threads of the reranker's models (0: one per core). One by default: the
    models are a few small matrix products, which a second thread only slows down by handing them over
    (hybrid p50 0.56 ms on one thread, 0.76 ms on two; BENCHMARKS.md); concurrent requests still use
    every core."""
    vector_inputs: bool = False
    """Feed the raw vectors to the models too (the query vector; per candidate its product vector and the
    element-wise product with the query), not only the scalars comparing them. Off by default: with them,
    the Grocery reranker learned the training photos themselves and lost to retrieval on val photos."""
    cross_fit: int = 3
    """When the store's embedder is trained towers: train this many fold retrievers (``models/<model>-fold<i>``,
    each on the other folds' training queries, with the store's ``[training]`` settings) and build each
    fold's training lists with its own retriever, so the reranker learns from mistakes on queries the
    retriever has not seen, as at search time. 0 or 1: lists from the store's own towers."""
    relational: bool = True
    """Chunk model: bias the attention between two candidates by the cosines of their fused, text and
    image vectors (learned multiples per block, head and kind), so it can compare how candidates relate
    to each other. On by default: the fused cosine alone raised the hybrid's NDCG@10 on Grocery's held-back
    training queries (0.840 → 0.847) and on Grocery val (0.812 → 0.832); the three kinds raised it again
    (BENCHMARKS.md); CrowdFlower, whose products have no images, stayed level."""
    history: bool = True
    """Keep the training queries' vectors with the reranker (``models/<model>/history.npz``) and give it,
    per candidate, the best cosine with the product's past queries (``vitrine.rerank.history``)."""
    calibration: str = "platt"
    """How r = P(instance match) is calibrated on the dev split: ``platt`` (r's own log-odds, slope and
    bias), ``temperature`` (one temperature over the four levels), ``isotonic`` or ``none``. Platt since
    session 12: temperature scaling cannot correct a reranker that under-predicts matches on held-back
    queries (CrowdFlower val ECE per seed 0.106 / 0.087 / 0.071 with temperature, 0.078 / 0.068 / 0.064 with
    Platt, scratch run on the benchmark's lists; Grocery level at 0.002)."""
    dev_fraction: float = 0.15
    """Training queries held back to pick the best epoch and to fit the calibration."""
    new_products: bool = True
    """Cross-fitting (and the held-back queries) put every query of some products in one fold, so their lists
    come from a retriever and a query history that never met the product: what a search meets for a product
    nobody has searched for yet. The share is the catalog's own, measured, not set: the products no training
    query is an instance match for (Grocery's new-products protocol: 20 of 81). Without it the reranker learns
    that an instance match always has past queries, and on Grocery it buried the never-trained products
    (their hit@1 0.389 → 0.051; BENCHMARKS.md, session 22). No effect when every product has queries. Without
    cross-fitting (zero-shot vectors, which no training has seen) the same products are left out of the history
    every training list reads, as a fold's history lacks them (hiding them from their own queries' lists alone
    cost seen products much of what the history gave them: BENCHMARKS.md, session 23)."""
    patience: int = 6
    seed: int = 0


BATCH_ENGINES = ("local", "ray")


@dataclass
class BatchConfig:
    """Where batch work (catalog encoding, governance) runs: ``local`` (this process) or ``ray``."""

    engine: str = "local"
    address: str = ""
    """Ray cluster to join (``auto``, ``ray://head:10001``); empty starts Ray on this machine."""
    num_cpus: int = 0
    """CPUs of a Ray started here (0 = all)."""
    workers: int = 0
    """Ray actors running the batch function side by side (0 = one per CPU)."""


@dataclass
class PrototypeConfig:
    """Prototype-ID training (Pailitao-VL): ``vitrine train --objective prototype --stages 1,2,3``."""

    stages: str = "1,2,3"
    """Stages to run, in order: 1 contrastive warm-up, 2 head + towers on frozen backbone features,
    3 end-to-end (``stage3_unfreeze`` top backbone blocks trained too). Finished stages are reused."""
    source: str = "auto"
    """Where prototype IDs come from: ``labels`` (a product's group, else the product itself),
    ``clusters`` (FAISS k-means over stage-1 product embeddings) or ``auto`` (labels when any
    product has a group or the catalog is small enough for one prototype per product)."""
    clusters: int = 0
    """Prototypes made by clustering (0: one per 4 training products)."""
    purify: float = 0.1
    """Clustering only: share of each cluster's members, farthest from its centroid, left unassigned."""
    margin: float = 0.2
    """Additive angular margin m (radians) on the target prototype: cos(theta_y + m)."""
    temperature: float = 0.05
    """Logits are cos / temperature (the ArcFace scale s = 1 / temperature)."""
    negatives: str = "auto"
    """``all`` prototypes, ``nearest`` (each target's nearest prototypes, the paper's dynamic proxy
    update), ``random`` (Partial FC), or ``auto``: all below ``sample_above`` prototypes, nearest above."""
    sample_ratio: float = 0.1
    """Share r of the prototypes one step compares with when sampling."""
    sample_above: int = 50_000
    refresh: int = 100
    """Steps between refreshes of the prototype-prototype neighbour table."""
    head_lr: float = 0.5
    """SGD learning rate of the prototype rows (only the rows a step touched are updated)."""
    head_dtype: str = "float32"
    """Storage of the prototype matrix: float32 or float16 (halves its memory at U = 10^6)."""
    product_weight: float = 1.0
    """Weight of classifying the products themselves into their prototypes (besides the queries)."""
    infonce_weight: float = 0.5
    """Weight of the query-product InfoNCE term kept beside the margin loss (0 = margin loss only)."""
    stage1_epochs: int = 0
    """Epochs of each stage (0: ``training.epochs``); stage 3 is the slow one on a CPU."""
    stage2_epochs: int = 0
    stage3_epochs: int = 4
    stage3_lr: float = 0.0
    """Stage 3's learning rate (0: ``training.lr``); the unfrozen blocks train at ``training.backbone_lr_scale`` of it."""
    stage3_batch_size: int = 0
    """Stage 3's batch size (0: ``training.batch_size``): a classifier against the prototype head needs no big
    batch of in-batch negatives, and smaller batches give the backbone blocks more steps."""
    stage3_lr_schedule: str = ""
    """Stage 3's learning-rate schedule (empty: ``training.lr_schedule``)."""
    stage3_dev_fraction: float = -1.0
    """Share of the examples stage 3 holds back as its dev split (negative: ``training.dev_fraction``); with a
    cosine schedule the split picks no epoch, so 0 lets stage 3 learn from every example."""
    stage3_unfreeze: int = 1
    """Top image-backbone blocks trained end to end in stage 3 (stage 1's, ``training.unfreeze_blocks``, if it
    fine-tuned some)."""
    stage3_unfreeze_text: int = 0
    """Top text-model transformer layers trained end to end in stage 3 (for text catalogs such as Shopee);
    where stage 1 already fine-tuned some (``training.unfreeze_text_layers``), stage 3 trains those on."""
    stage3_matryoshka: bool = False
    """Also apply the margin loss at the Matryoshka prefixes (``training.matryoshka``) in stage 3."""


STAGE3_RECIPES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "towers": MappingProxyType({}),
    "classifier": MappingProxyType({"prototype.stage3_batch_size": 32, "prototype.stage3_lr": 1e-3,
                                    "prototype.stage3_lr_schedule": "cosine", "prototype.stage3_dev_fraction": 0.0}),
})
"""Named bundles of stage-3 settings (``vitrine train --stage3-recipe``). ``towers``: stage 3 trains as stages 1-2
do. ``classifier``: as a classifier on a backbone is commonly fine-tuned (batches of 32, lr 1e-3 with the unfrozen
blocks at ``training.backbone_lr_scale`` of it, a cosine schedule, no dev split since a cosine run picks no epoch);
on Grocery's seen products it lifted stage 3 by about 0.04 R@1 and lowered never-trained products (BENCHMARKS.md)."""


def stage3_recipe_settings(name: str) -> Mapping[str, Any]:
    """The settings of stage-3 recipe ``name``; an unknown name is a user error naming the known ones."""
    if name not in STAGE3_RECIPES:
        raise VitrineError(f"unknown stage-3 recipe {name!r} (known: {', '.join(STAGE3_RECIPES)})")
    return STAGE3_RECIPES[name]


@dataclass
class Config:
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    prototype: PrototypeConfig = field(default_factory=PrototypeConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)

    @classmethod
    def load(cls, path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> "Config":
        """Defaults, updated by the TOML file at ``path`` (if given), then by dotted ``overrides``."""
        config = cls()
        if path is not None:
            config = config.merged(_read_toml(path), source=str(path))
        if overrides:
            config = config.with_overrides(overrides)
        return config

    def merged(self, table: Mapping[str, Any], source: str = "config") -> "Config":
        flat = {f"{section}.{key}": value for section, values in table.items()
                if isinstance(values, Mapping) for key, value in values.items()}
        stray = [section for section, values in table.items() if not isinstance(values, Mapping)]
        if stray:
            raise VitrineError(f"{source}: top-level key {stray[0]!r} must be inside a [section]")
        return self.with_overrides(flat, source=source)

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "override") -> "Config":
        """A copy with dotted keys replaced; values given as strings are converted to the field's type."""
        config = dataclasses.replace(self, **{f.name: dataclasses.replace(getattr(self, f.name))
                                              for f in dataclasses.fields(self)})
        for dotted, value in overrides.items():
            section_name, _, key = dotted.partition(".")
            section = getattr(config, section_name, None)
            if section is None or not dataclasses.is_dataclass(section) or key not in _field_types(section):
                raise VitrineError(f"{source}: unknown setting {dotted!r}")
            setattr(section, key, _coerce(value, _field_types(section)[key], dotted, source))
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        write_atomic(path, tomli_w.dumps(self.to_dict()).encode())


def data_dir() -> Path:
    """Where the shared datasets live: ``$VITRINE_DATA``, else ``../shared/data`` beside this checkout."""
    if os.environ.get("VITRINE_DATA"):
        return Path(os.environ["VITRINE_DATA"])
    for base in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["index.factory=HNSW32"]`` → ``{"index.factory": "HNSW32"}``, for CLI ``--set`` flags."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VitrineError(f"--set expects KEY=VALUE (like index.factory=HNSW32), got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VitrineError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise VitrineError(f"{path}: not valid TOML ({exc})") from None


def _field_types(section: Any) -> dict[str, type]:
    return {f.name: type(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _coerce(value: Any, kind: type, key: str, source: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(text)
        return kind(int(float(text))) if kind is int else kind(text)
    except ValueError:
        raise VitrineError(f"{source}: {key} must be {kind.__name__}, got {value!r}") from None
