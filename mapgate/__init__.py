"""mapgate: prove an optimized object detector is as accurate as the model it came from.

Data flows one way: dataset -> preprocess -> backend -> postprocess -> detections
-> evaluate -> compare -> report.
"""

__version__ = "0.1.0"
