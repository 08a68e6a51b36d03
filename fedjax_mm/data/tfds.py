"""TFDS data path: the synthetic world as a TFDS dataset, and a generic loader.

Everything here runs with ``tensorflow-datasets`` and ``array-record`` but
*without* TensorFlow: datasets are written as ``array_record`` files and read
back through ``builder.as_data_source()`` (random access, numpy records).
``tfds.load``/``as_dataset`` and the ``tfrecord`` format need TensorFlow.

* :class:`ShapesWorld` / :func:`build_world_dataset` write the embedded world
  (images, caption text in one style, attributes) into a local ``data_dir``;
  nothing is downloaded, the splits come from :func:`world.generate`.
* :func:`load_image_caption` reads any image-caption or image-label source
  into packed numpy arrays (``image`` uint8 ``[N, S, S, 3]``, ``tokens`` int32
  ``[N, L]`` and every integer/bool scalar feature); :func:`to_federated`
  packs them into a :class:`~fedjax_mm.data.federated.FederatedData`.

The builder lives in :mod:`fedjax_mm.data.tfds_world`, the tokenizer and
loaders in :mod:`fedjax_mm.data.tfds_loading`; both are re-exported here.

Real data. Preparing a TFDS dataset usually needs TensorFlow (builders read
files with ``tf.io.gfile`` and encode images with ``tf.image``); *reading* a
prepared ``array_record`` directory does not. So prepare once where TF is
installed, e.g. ``tfds.builder("coco_captions", data_dir=DIR)
.download_and_prepare(file_format="array_record")``, then here::

    builder = tfds.builder_from_directory(f"{DIR}/coco_captions/2014/1.1.0")
    texts = read_captions(builder.as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()}),  # no image decoding
        caption_key="captions/text")
    arrays = load_image_caption(builder.as_data_source("train"),
                                tokenizer=build_tokenizer(texts, max_words=10_000),
                                caption_key="captions/text", caption_index=0)

``coco_captions`` (COCO 2014 in the Karpathy splits: train 82,783, val 5,000,
test 5,000, restval 30,504) needs no manual download: it fetches ~37.6 GiB of
zips from cocodataset.org plus the split file, but its builder code imports
TensorFlow (here ``tfds.builder("coco_captions")`` raises
``ModuleNotFoundError: No module named 'tensorflow'``). Its features:
``image`` (variable-size JPEG, decoded here by PIL), ``image/filename``,
``image/id`` (int64), ``captions`` = ``Sequence({"text": str, "id": int64})``
(about 5 per image) and ``objects``. Image-label data (``cifar10``: features
``id``, ``image``, ``label``) goes through ``label_key="label"``; captions come
from ``templates`` and the class names stored in the prepared dataset.
Images are center-cropped and resized to ``image_size``.

Verified here (tfds 4.9.10, no TF): the world round trip, cifar10 under
``tfds.testing.mock_data`` and a coco-shaped builder (PNG ``Image``,
``Sequence`` captions, a slashed key, ``ClassLabel``) read back through
``builder_from_directory``. Real coco_captions/cifar10 files were not.
"""

# Re-exported so callers keep using tfds.<name> (the record helpers, too).
from fedjax_mm.data.tfds_loading import DEFAULT_TEMPLATES  # noqa: F401
from fedjax_mm.data.tfds_loading import _get  # noqa: F401
from fedjax_mm.data.tfds_loading import _image  # noqa: F401
from fedjax_mm.data.tfds_loading import _records  # noqa: F401
from fedjax_mm.data.tfds_loading import _text  # noqa: F401
from fedjax_mm.data.tfds_loading import build_tokenizer  # noqa: F401
from fedjax_mm.data.tfds_loading import encode  # noqa: F401
from fedjax_mm.data.tfds_loading import load_image_caption  # noqa: F401
from fedjax_mm.data.tfds_loading import read_captions  # noqa: F401
from fedjax_mm.data.tfds_loading import to_federated  # noqa: F401
from fedjax_mm.data.tfds_loading import words  # noqa: F401
from fedjax_mm.data.tfds_world import ShapesWorld  # noqa: F401
from fedjax_mm.data.tfds_world import ShapesWorldConfig  # noqa: F401
from fedjax_mm.data.tfds_world import build_world_dataset  # noqa: F401
from fedjax_mm.data.tfds_world import world_config  # noqa: F401
from fedjax_mm.data.tfds_world import world_examples  # noqa: F401
