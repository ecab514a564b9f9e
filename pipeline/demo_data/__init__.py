"""The embedded demo data set, built offline from what pip installed.

`build_demo_data(out, DemoDataConfig())` writes
  {out}/pool/*.mp4                         unlabeled H.264 clips (real clips cut up + camera motion over photos)
  {out}/actions/videos/{class}/{name}.avi  a labeled camera-motion set laid out exactly like HMDB-51
  {out}/actions/testTrainMulti_7030_splits/{class}_test_split{1,2,3}.txt
plus README.txt, sources.csv, config.yaml, provenance.json and the .complete stamp. Same config,
same bytes.
"""

from distinit.pipeline.demo_data.build import build_demo_data, demo_config_hash
from distinit.pipeline.demo_data.config import DemoDataConfig
from distinit.pipeline.demo_data.summary import DemoDataSummary

__all__ = ["DemoDataConfig", "DemoDataSummary", "build_demo_data", "demo_config_hash"]
