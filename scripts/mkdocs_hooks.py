"""mkdocs hooks (mkdocs.yml `hooks:`): the site also holds the pages outside docs/ that docs link to.

The docs are read as plain files too (in the repository, in the sdist), where `../README.md` from
docs/ and `docs/index.md` from the README are the right links. In the site, each file of OUTSIDE
becomes a page under `project/`, and the links between it and the docs pages are rewritten to the
site's paths, so every such link is still checked by `mkdocs build --strict` (a link to a file that
is neither in docs/ nor in OUTSIDE is left as it is, and fails the strict build).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

# Repository path -> the page's path in the site; and whether the page is in mkdocs.yml's nav.
OUTSIDE = {
    "README.md": ("project/README.md", InclusionLevel.INCLUDED),
    "BENCHMARKS.md": ("project/BENCHMARKS.md", InclusionLevel.INCLUDED),
    # The developers' log of performance changes: linked from the docs, kept out of the nav.
    "bench/perf-log.md": ("project/bench/perf-log.md", InclusionLevel.NOT_IN_NAV),
}

# An inline link's target: `](target` up to `)`, `#` or whitespace (a title may follow).
LINK = re.compile(r"(\]\()([^)#\s]+)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _docs_prefix(config: MkDocsConfig) -> str:
    return Path(config.docs_dir).resolve().relative_to(_root(config)).as_posix() + "/"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _root(config)
    for repo_path, (site_uri, inclusion) in OUTSIDE.items():
        if files.get_file_from_path(site_uri) is not None:
            raise ValueError(f"{site_uri} is both in {config.docs_dir} and made from {repo_path}")
        files.append(
            File.generated(
                config, site_uri, abs_src_path=str(root / repo_path), inclusion=inclusion
            )
        )
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    docs = _docs_prefix(config)
    to_site = {repo: site for repo, (site, _) in OUTSIDE.items()}
    from_site = {site: repo for repo, site in to_site.items()}
    page_site = page.file.src_uri
    page_repo = from_site.get(page_site, docs + page_site)

    def site_path(repo_path: str) -> str | None:
        if repo_path in to_site:
            return to_site[repo_path]
        if repo_path.startswith(docs) and files.get_file_from_path(repo_path[len(docs) :]):
            return repo_path[len(docs) :]
        return None

    def rewrite(match: re.Match[str]) -> str:
        target = match[2]
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("/"):
            return match[0]  # a URL, or an absolute path: mkdocs' own rules apply
        repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo), target))
        site_target = site_path(repo_target)
        if site_target is None:
            return match[0]  # not a page of the site: mkdocs reports it
        relative = posixpath.relpath(site_target, posixpath.dirname(page_site) or ".")
        return match[1] + relative

    out, in_fence = [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
        else:
            out.append(line if in_fence else LINK.sub(rewrite, line))
    return "".join(out)
