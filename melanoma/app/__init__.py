"""The clinic page (`melanoma app`): upload lesion images, see the alert at a site's threshold,
where the network looked and whether to trust the answer. answers.py computes, page.py shows
(Streamlit), launch.py starts the server."""
